//! The progress bar: the library's `Progress` hooks drawn by indicatif on stderr.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use tally::progress::Progress;

/// An indicatif bar over input bytes, drawn only on a terminal.
pub struct Bar(Option<ProgressBar>);

impl Bar {
    pub fn new(hidden: bool) -> Bar {
        if hidden || !std::io::stderr().is_terminal() {
            return Bar(None);
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}) {msg}",
            )
            .expect("valid template"),
        );
        Bar(Some(bar))
    }
}

impl Progress for Bar {
    fn start(&self, total: u64) {
        if let Some(b) = &self.0 {
            b.set_length(total);
            b.set_position(0);
        }
    }
    fn update(&self, bytes: u64, records: u64) {
        if let Some(b) = &self.0 {
            b.set_position(bytes);
            b.set_message(format!("{records} records"));
        }
    }
    fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}
