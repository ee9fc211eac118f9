//! The file source on any file: NDJSON, gzip, and the JSON exports it reads whole (CloudWatch
//! `GetLogEvents` / `FilterLogEvents` responses, Logs Insights results). The input is written
//! to a file and read with `tally::source::files::read_file`, as `tally ingest` does, through a
//! decoder set up from the sample `fixtures/tally.toml` (tenancy rules, built-in prices).
//!
//! Besides "no panic", checks that
//! - every piece counts what it holds (received = entries + rejects, one origin per entry),
//!   chains its positions (a piece expects the position the one before it ended at) and
//!   carries a position that decodes and does not move backwards;
//! - every reject has a detail, a 1-based line and an offset inside the input;
//! - a plain (not gzip) file ends at its length, after as many lines as it has;
//! - with the smallest `ingest.max_record_bytes`, exactly the longer lines are quarantined;
//! - reading again from the checkpoint after the first piece yields exactly the entries and
//!   rejects the first read found after it (the resume path of a grown file).
#![no_main]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use tally::config::Config;
use tally::pricing::Catalog;
use tally::quarantine::Reason;
use tally::record::ParseOptions;
use tally::source::files::{read_file, FileJob, FilePosition, ReadSettings};
use tally::source::{Decoder, Piece};
use tally::tenant::Resolver;
use tally::usage::Metering;

struct Setup {
    resolver: Resolver,
    catalog: Catalog,
    path: PathBuf,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let text = include_str!("../../../fixtures/tally.toml");
        let config = Config::from_toml(text, Path::new("tally.toml"), PathBuf::new()).expect("the sample config is valid");
        let dir = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let path = dir.join(format!("tally-fuzz-export-{}.json", std::process::id()));
        Setup { resolver: Resolver::new(&config.tenancy), catalog: Catalog::builtin(), path }
    })
}

fn read(s: &Setup, data: &[u8], settings: &ReadSettings, resume: Option<(String, FilePosition)>) -> Vec<Piece> {
    let (expected, resume) = match resume {
        Some((e, p)) => (Some(e), Some(p)),
        None => (None, None),
    };
    let job = FileJob { path: s.path.clone(), key: "file:///fuzz".into(), size: data.len() as u64, expected, resume };
    let mut decoder = Decoder::new(Metering::new(&s.resolver, &s.catalog), ParseOptions::default());
    let mut pieces = Vec::new();
    let mut send = |p: Piece| {
        pieces.push(p);
        true
    };
    read_file(&job, &mut decoder, settings, &Arc::new(AtomicU64::new(0)), &AtomicBool::new(false), &mut send)
        .expect("reading a local file");
    pieces
}

fn lines_in(data: &[u8]) -> u64 {
    let newlines = data.iter().filter(|&&b| b == b'\n').count() as u64;
    newlines + u64::from(data.last().is_some_and(|&b| b != b'\n'))
}

/// Checks one read's pieces; returns their decoded positions.
fn check_pieces(data: &[u8], pieces: &[Piece], first_expected: Option<&str>) -> Vec<FilePosition> {
    let gz = data.starts_with(&[0x1f, 0x8b]);
    let mut positions: Vec<FilePosition> = Vec::new();
    let mut expected = first_expected.map(str::to_string);
    for p in pieces {
        assert_eq!(p.received as usize, p.entries.len() + p.rejects.len(), "received counts every record once");
        assert_eq!(p.entries.len(), p.origins.len(), "one origin per entry");
        assert_eq!(p.expected, expected, "a piece expects where the one before it ended");
        let pos = FilePosition::decode(&p.position).expect("the position decodes");
        assert_eq!(pos.size, data.len() as u64);
        if let Some(prev) = positions.last() {
            assert!(pos.offset >= prev.offset && pos.line >= prev.line, "position moved backwards: {prev:?} -> {pos:?}");
        }
        for r in &p.rejects {
            assert!(!r.detail.trim().is_empty(), "reject {:?} without a detail", r.reason);
            assert!(r.line >= 1, "line numbers are 1-based");
            if !gz {
                assert!(r.offset <= data.len() as u64, "reject offset {} past the end {}", r.offset, data.len());
            }
        }
        for o in &p.origins {
            assert!(o.line >= 1);
            if !gz {
                assert!(o.offset < data.len() as u64, "record offset {} past the end {}", o.offset, data.len());
            }
        }
        for e in &p.entries {
            assert_eq!(e.usage.requests, 1);
        }
        expected = Some(p.position.clone());
        positions.push(pos);
    }
    positions
}

fuzz_target!(|data: &[u8]| {
    let s = setup();
    {
        let mut f = std::fs::File::create(&s.path).expect("create the input file");
        f.write_all(data).expect("write the input file");
    }

    // As ingest reads a file: whole-file documents allowed up to the limit, small pieces.
    let settings = ReadSettings { max_record_bytes: 1 << 20, piece_records: 2, follow: false };
    let pieces = read(s, data, &settings, None);
    assert!(!pieces.is_empty(), "a first read always sends a position");
    let positions = check_pieces(data, &pieces, None);
    let last = positions.last().unwrap();
    let gz = data.starts_with(&[0x1f, 0x8b]);
    if !gz {
        if last.document {
            assert_eq!(pieces.len(), 1, "a document is one piece");
            assert_eq!(last.offset, data.len() as u64);
            assert_eq!(last.line, data.iter().filter(|&&b| b == b'\n').count() as u64);
        } else {
            assert_eq!(last.offset, data.len() as u64, "a plain file is read to its end");
            assert_eq!(last.line, lines_in(data), "every line is counted");
        }
    }

    // Resuming after the first piece finds what the first read found after it.
    if pieces.len() > 1 && !positions[0].document {
        let resumed = read(s, data, &settings, Some((pieces[0].position.clone(), positions[0].clone())));
        check_pieces(data, &resumed, Some(&pieces[0].position));
        let tail = |ps: &[Piece]| {
            let entries: Vec<_> = ps.iter().flat_map(|p| p.entries.iter().cloned().zip(p.origins.iter().copied())).collect();
            let rejects: Vec<_> = ps.iter().flat_map(|p| p.rejects.iter().cloned()).collect();
            (entries, rejects)
        };
        let (want_entries, want_rejects) = tail(&pieces[1..]);
        let (got_entries, got_rejects) = tail(&resumed);
        assert_eq!(got_entries, want_entries, "entries after a resume");
        assert_eq!(got_rejects, want_rejects, "rejects after a resume");
        // Nothing left to read sends nothing (the file's position did not move).
        let end = resumed.last().map_or(&pieces[0].position, |p| &p.position);
        assert_eq!(end, &pieces.last().unwrap().position, "a resumed read ends where the whole read did");
    }

    // The smallest line limit the config allows: every longer line (a document: the whole
    // file) is quarantined as too long, and no other.
    const SMALL: usize = 1024;
    let small = ReadSettings { max_record_bytes: SMALL, piece_records: 1000, follow: false };
    let pieces = read(s, data, &small, None);
    let positions = check_pieces(data, &pieces, None);
    let too_long = pieces.iter().flat_map(|p| &p.rejects).filter(|r| r.reason == Reason::LineTooLong).count();
    if !gz {
        if positions.last().unwrap().document {
            assert_eq!(too_long, usize::from(data.len() > SMALL), "a document longer than the limit is one reject");
        } else {
            let want = data.split(|&b| b == b'\n').filter(|l| l.len() > SMALL).count();
            assert_eq!(too_long, want, "lines longer than max_record_bytes ({SMALL}) are quarantined, and only those");
        }
    }

    // Follow mode: a partial last line waits for the writer. (A plain file that ends in a
    // newline reads as above.)
    if gz || data.last().is_some_and(|&b| b != b'\n') {
        let follow = ReadSettings { max_record_bytes: SMALL, piece_records: 1000, follow: true };
        let pieces = read(s, data, &follow, None);
        let positions = check_pieces(data, &pieces, None);
        if !gz {
            assert!(positions.last().unwrap().offset <= data.len() as u64);
        }
    }
    // Not left behind in /dev/shm when the process ends (a crash leaves it, as evidence).
    let _ = std::fs::remove_file(&s.path);
});
