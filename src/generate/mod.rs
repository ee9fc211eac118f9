//! A fixture generator: a realistic month of invocation logs for N tenants, in the S3 delivery
//! layout (gzip NDJSON per hour) plus plain NDJSON CloudWatch dumps, with a matching
//! `tally.toml` and the ground truth the ingester must reproduce.
//! `cur` makes the matching Cost and Usage Report.
//!
//! The truth is computed here from what was generated (which tenant each record was made
//! for), not by running tally's own resolver or aggregation, so tests comparing the two check
//! something real. Output is a pure function of the spec and seed.

pub mod cur;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::ids;

/// What to generate.
#[derive(Debug, Clone)]
pub struct Spec {
    pub out: PathBuf,
    pub tenants: usize,
    pub records: u64,
    /// `YYYY-MM`.
    pub month: String,
    pub seed: u64,
    /// Share of records delivered only as plain NDJSON (CloudWatch dumps) instead of gzip.
    pub plain_fraction: f64,
    /// Share of gzip records delivered a second time in a plain file (counted once).
    pub duplicate_fraction: f64,
    /// Share of records delivered in a later hour's folder than their timestamp's.
    pub late_fraction: f64,
    /// Mean size of the prompt and completion text, in bytes.
    pub body_bytes: usize,
    /// Records per gzip object (at most).
    pub records_per_object: usize,
    /// Spread the records over the month's first this many hours (`None`: the whole month).
    pub hours: Option<u64>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            out: PathBuf::from("out/fixtures"),
            tenants: 20,
            records: 10_000,
            month: "2025-11".into(),
            seed: 1,
            plain_fraction: 0.1,
            duplicate_fraction: 0.01,
            late_fraction: 0.02,
            body_bytes: 400,
            records_per_object: 2_000,
            hours: None,
        }
    }
}

/// The expected counters of one tenant × hour × resource.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TruthRow {
    pub tenant: String,
    pub hour: String,
    pub resource: String,
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    pub requests: u64,
    pub errors: u64,
    pub no_usage: u64,
    /// The account the calls came from (`accountId`).
    #[serde(default)]
    pub account: String,
    /// The caller's IAM principal when the identity rule decided the tenant (billed on CUR
    /// lines of their own); empty otherwise.
    #[serde(default)]
    pub principal: String,
    /// The part of `cache_write` written with a 1 h TTL.
    #[serde(default)]
    pub cache_write_1h: u64,
    #[serde(default)]
    pub images: u64,
}

/// What the ingester must find.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Truth {
    /// Records written, including duplicates and the two non-records.
    pub received: u64,
    pub counted: u64,
    pub duplicates: u64,
    pub skipped: BTreeMap<String, u64>,
    pub rows: Vec<TruthRow>,
}

/// What was written.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub logs: PathBuf,
    pub config: PathBuf,
    pub truth: PathBuf,
    pub files: u64,
    pub bytes: u64,
    pub records: u64,
}

const ACCOUNT: &str = "111122223333";

/// splitmix64: small, fast, and stable forever (fixtures must not change with a crate update).
/// Also drives the CUR generator (`cur::generate`).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    /// Roughly log-normal around `mean`.
    fn around(&mut self, mean: f64) -> u64 {
        let u = self.unit().max(1e-12);
        (mean * (-u.ln()) * (0.5 + self.unit())).round() as u64
    }
    fn uuid(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            (b >> 48) & 0x3fff | 0x8000,
            b & 0xffff_ffff_ffff
        )
    }
}

/// How a tenant's calls are attributed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Attribution {
    Metadata,
    DedicatedProfile,
    IdentityRole,
    /// A silo tenant in its own AWS account (`[[tenancy.accounts]]`).
    SiloAccount,
}

struct Tenant {
    name: String,
    how: Attribution,
    aip: String,
    /// The AWS account its calls come from.
    account: String,
}

/// The account of silo tenant `k`.
fn silo_account(k: usize) -> String {
    format!("{:012}", 444_400_000_000u64 + k as u64)
}

fn tenant_name(k: usize) -> String {
    format!("tenant-{k:04}")
}

fn aip_arn(k: usize) -> String {
    format!("arn:aws:bedrock:us-east-1:{ACCOUNT}:application-inference-profile/aip{k:09}")
}

const SHARED_POOL: &str = "arn:aws:bedrock:us-east-1:111122223333:application-inference-profile/sharedpool01";
const AIP_MODEL: &str = "anthropic.claude-haiku-4-5-20251001-v1:0";
const POOL_MODEL: &str = "amazon.nova-lite-v1:0";
/// The image model some tenants call (billed per image).
const IMAGE_MODEL: &str = "amazon.titan-image-generator-v1";

/// The models callers use, in the forms they are logged in; (modelId, is_embedding, caches).
const MODELS: [(&str, bool, bool); 8] = [
    ("anthropic.claude-3-haiku-20240307-v1:0", false, false),
    (
        "arn:aws:bedrock:us-east-1:111122223333:inference-profile/us.anthropic.claude-haiku-4-5-20251001-v1:0",
        false,
        true,
    ),
    (
        "arn:aws:bedrock:us-east-1:111122223333:inference-profile/global.anthropic.claude-sonnet-4-20250514-v1:0",
        false,
        true,
    ),
    ("amazon.nova-micro-v1:0", false, false),
    ("amazon.nova-lite-v1:0", false, true),
    ("arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-pro-v1:0", false, false),
    ("meta.llama3-1-70b-instruct-v1:0", false, false),
    ("amazon.titan-embed-text-v2:0", true, false),
];

const WORDS: &str = "the quarterly report shows revenue growth across all regions while costs stayed flat \
and the team asks for a summary of customer feedback on the new onboarding flow with action items \
please draft an email to the vendor about the delayed shipment and propose two alternative dates ";

/// Generates the data set.
pub fn generate(spec: &Spec) -> io::Result<Summary> {
    let (month_start, month_end) = crate::store::month_range(&spec.month)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let logs = spec.out.join("logs");
    if logs.exists() {
        fs::remove_dir_all(&logs)?;
    }
    let s3_root = logs.join(format!("AWSLogs/{ACCOUNT}/BedrockModelInvocationLogs"));
    fs::create_dir_all(&s3_root)?;
    File::create(s3_root.join(crate::source::files::MARKER_OBJECT))?;

    let mut rng = Rng(spec.seed ^ 0x7a11_7a11);
    let tenants: Vec<Tenant> = (0..spec.tenants.max(1))
        .map(|k| Tenant {
            name: tenant_name(k),
            how: match k % 10 {
                _ if k % 20 == 3 => Attribution::SiloAccount,
                7 | 8 => Attribution::DedicatedProfile,
                9 => Attribution::IdentityRole,
                _ => Attribution::Metadata,
            },
            aip: aip_arn(k),
            account: if k % 20 == 3 { silo_account(k) } else { ACCOUNT.to_string() },
        })
        .collect();
    // Zipf-like tenant sizes: a few big tenants, a long tail.
    let weights: Vec<f64> = (0..tenants.len()).map(|k| 1.0 / ((k + 1) as f64).powf(1.1)).collect();
    let total_w: f64 = weights.iter().sum();
    let cumulative: Vec<f64> = weights
        .iter()
        .scan(0.0, |acc, w| {
            *acc += w / total_w;
            Some(*acc)
        })
        .collect();

    let month_hours = ((month_end - month_start) / 3600) as u64;
    let hours = spec.hours.map_or(month_hours, |h| h.clamp(1, month_hours));
    let mut truth: BTreeMap<(String, i64, String, String, String), TruthRow> = BTreeMap::new();
    let mut counts = Truth::default();
    let mut files = 0u64;
    let mut bytes = 0u64;
    let mut carry: Vec<(i64, String)> = Vec::new();
    let mut plain: BTreeMap<String, BufWriter<File>> = BTreeMap::new();
    let cw_dir = logs.join("cloudwatch");
    fs::create_dir_all(&cw_dir)?;
    let mut produced = 0u64;
    let mut line = String::with_capacity(4096);

    for h in 0..hours {
        let hour_start = month_start + (h * 3600) as i64;
        // Spread records evenly over hours, with the remainder going to the first ones.
        let n = spec.records / hours + u64::from(h < spec.records % hours);
        let mut stamps: Vec<i64> = (0..n).map(|_| hour_start + rng.below(3600) as i64).collect();
        stamps.sort_unstable();
        let mut here: Vec<(i64, String)> = std::mem::take(&mut carry);
        for ts in stamps {
            produced += 1;
            let u = rng.unit();
            let k = cumulative.partition_point(|&c| c < u).min(tenants.len() - 1);
            let (tenant, resource, principal) = write_record(&mut line, &mut rng, &tenants[k], ts, spec.body_bytes);
            let usage = parse_back(&line);
            let account = tenants[k].account.clone();
            let key = (tenant.clone(), ids::hour_of(ts), resource.clone(), account.clone(), principal.clone());
            let row = truth.entry(key).or_insert_with(|| TruthRow {
                tenant,
                hour: ids::hour_label(ids::hour_of(ts)),
                resource,
                account,
                principal,
                ..TruthRow::default()
            });
            row.cache_write_1h += usage.6;
            row.images += usage.7;
            row.input += usage.0;
            row.output += usage.1;
            row.cache_read += usage.2;
            row.cache_write += usage.3;
            row.requests += 1;
            row.errors += usage.4;
            row.no_usage += usage.5;
            counts.received += 1;
            counts.counted += 1;

            if rng.chance(spec.plain_fraction) {
                write_plain(&mut plain, &cw_dir, ts, &line, &mut files)?;
                continue;
            }
            if rng.chance(spec.duplicate_fraction) {
                write_plain(&mut plain, &cw_dir, ts, &line, &mut files)?;
                counts.received += 1;
                counts.duplicates += 1;
            }
            if rng.chance(spec.late_fraction) && h + 1 < hours {
                carry.push((ts, line.clone()));
            } else {
                here.push((ts, line.clone()));
            }
        }
        for (i, chunk) in here.chunks(spec.records_per_object.max(1)).enumerate() {
            let t = ids::utc(hour_start);
            let dir = s3_root.join(format!("us-east-1/{}", t.format("%Y/%m/%d/%H")));
            fs::create_dir_all(&dir)?;
            let name = format!("{}_{:016x}.json.gz", t.format("%Y%m%dT%H%M%SZ"), rng.next() ^ i as u64);
            let path = dir.join(name);
            let mut gz =
                flate2::write::GzEncoder::new(BufWriter::new(File::create(&path)?), flate2::Compression::new(6));
            for (_, l) in chunk {
                gz.write_all(l.as_bytes())?;
                gz.write_all(b"\n")?;
            }
            gz.finish()?.flush()?;
            files += 1;
            bytes += fs::metadata(&path)?.len();
        }
    }
    debug_assert_eq!(produced, spec.records);
    // The permission-check event heads the first CloudWatch dump, as in a real log group.
    let first = cw_dir.join("0000-permission-check.ndjson");
    fs::write(&first, format!("{}\n", crate::source::PERMISSION_CHECK_TEXT))?;
    files += 2;
    counts.received += 2;
    counts.skipped.insert("permission_check".into(), 1);
    counts.skipped.insert("marker_object".into(), 1);
    for (_, mut w) in plain {
        w.flush()?;
    }
    for entry in fs::read_dir(&cw_dir)? {
        bytes += entry?.metadata()?.len();
    }

    counts.rows = truth.into_values().collect();
    let truth_path = spec.out.join("truth.json");
    serde_json::to_writer(BufWriter::new(File::create(&truth_path)?), &counts)?;
    let config = spec.out.join("tally.toml");
    fs::write(&config, config_text(&tenants))?;
    Ok(Summary { logs, config, truth: truth_path, files, bytes, records: spec.records })
}

fn write_plain(
    plain: &mut BTreeMap<String, BufWriter<File>>,
    dir: &Path,
    ts: i64,
    line: &str,
    files: &mut u64,
) -> io::Result<()> {
    let day = ids::day_of(ts);
    if !plain.contains_key(&day) {
        plain.insert(day.clone(), BufWriter::new(File::create(dir.join(format!("{day}.ndjson")))?));
        *files += 1;
    }
    let w = plain.get_mut(&day).expect("inserted above");
    w.write_all(line.as_bytes())?;
    w.write_all(b"\n")
}

/// Reads the counts back out of the line just written (the generator's own bookkeeping,
/// independent of tally's parser): (input, output, cache_read, cache_write, error, no_usage,
/// 1 h cache writes, images).
fn parse_back(line: &str) -> (u64, u64, u64, u64, u64, u64, u64, u64) {
    let v: serde_json::Value = serde_json::from_str(line).expect("generated JSON is valid");
    let n = |p: &str| v.pointer(p).and_then(|x| x.as_u64());
    let error = v.get("errorCode").is_some();
    let counts = [
        n("/input/inputTokenCount"),
        n("/output/outputTokenCount"),
        n("/input/cacheReadInputTokenCount"),
        n("/input/cacheWriteInputTokenCount"),
    ];
    let images = n("/output/outputImagesCount");
    let none = counts.iter().all(Option::is_none) && images.is_none();
    let c = |i: usize| counts[i].unwrap_or(0);
    let hour = v
        .pointer("/output/outputBodyJson/usage/cacheDetails")
        .and_then(|d| d.as_array())
        .map(|d| d.iter().filter(|e| e["ttl"] == "1h").filter_map(|e| e["inputTokens"].as_u64()).sum::<u64>())
        .unwrap_or(0);
    (c(0), c(1), c(2), c(3), u64::from(error), u64::from(none && !error), hour, images.unwrap_or(0))
}

fn text(rng: &mut Rng, mean: usize) -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let big = TEXT.get_or_init(|| WORDS.repeat(400));
    let start = rng.below(WORDS.len() as u64) as usize;
    let len = (rng.around(mean as f64) as usize).min(big.len() - start);
    &big[start..start + len]
}

/// Writes one record into `line`; returns the tenant it belongs to, its resource, and the
/// caller's principal when the identity rule decides its tenant.
fn write_record(line: &mut String, rng: &mut Rng, t: &Tenant, ts: i64, body: usize) -> (String, String, String) {
    line.clear();
    // A silo tenant's records are its own whatever they say: never unattributed.
    let unattributed = t.how != Attribution::SiloAccount && rng.chance(0.01);
    let pooled = t.how == Attribution::Metadata && !unattributed && rng.chance(0.1);
    let image = t.how == Attribution::Metadata && !unattributed && !pooled && rng.chance(0.02);
    let (model_id, embedding, caches) = match t.how {
        _ if pooled => (SHARED_POOL.to_string(), false, false),
        _ if image => (IMAGE_MODEL.to_string(), false, false),
        Attribution::DedicatedProfile if !unattributed => (t.aip.clone(), false, true),
        _ => {
            let (m, e, c) = MODELS[rng.below(MODELS.len() as u64) as usize];
            (m.to_string(), e, c)
        }
    };
    let tenant = if unattributed { ids::UNATTRIBUTED.to_string() } else { t.name.clone() };
    let account = &t.account;
    let identity = match t.how {
        Attribution::IdentityRole if !unattributed => {
            format!("arn:aws:sts::{ACCOUNT}:assumed-role/tenant-{}/session-{}", t.name, rng.below(4))
        }
        _ => format!("arn:aws:iam::{account}:user/app-server-{}", rng.below(4)),
    };
    let principal = if t.how == Attribution::IdentityRole && !unattributed { identity.clone() } else { String::new() };
    let op = match rng.below(20) {
        0..=7 => "Converse",
        8..=12 => "ConverseStream",
        13..=16 => "InvokeModel",
        _ => "InvokeModelWithResponseStream",
    };
    let op = if embedding || image { "InvokeModel" } else { op };
    let roll = rng.unit();
    let failed = roll < 0.005;
    let blocked = !failed && roll < 0.008 && op == "InvokeModel";
    let stamp = ids::utc(ts).format("%Y-%m-%dT%H:%M:%SZ");
    // Keys in the order real CloudWatch records have them: schemaType last.
    let _ = write!(
        line,
        r#"{{"timestamp":"{stamp}","accountId":"{account}","identity":{{"arn":"{identity}"}},"region":"us-east-1","requestId":"{}","operation":"{op}","modelId":"{model_id}""#,
        rng.uuid()
    );
    if image && !failed {
        // Titan Image Generator: images, no tokens (its body's base64 images are left out).
        let _ = write!(
            line,
            r#","input":{{"inputContentType":"application/json","inputBodyJson":{{"taskType":"TEXT_IMAGE","textToImageParams":{{"text":"{}"}}}}}},"output":{{"outputContentType":"application/json","outputImagesCount":{}}}"#,
            text(rng, 60).replace('\n', " "),
            1 + rng.below(3)
        );
    } else if failed {
        line.push_str(r#","errorCode":"ThrottlingException","input":{"inputContentType":"application/json"},"output":{"outputContentType":"application/json"}"#);
    } else if blocked {
        let prompt = text(rng, body);
        let _ = write!(
            line,
            r#","input":{{"inputContentType":"application/json","inputBodyJson":{{"messages":[{{"role":"user","content":[{{"text":"{prompt}"}}]}}]}}}},"output":{{"outputContentType":"application/json","outputBodyJson":{{"amazon-bedrock-guardrailAction":"INTERVENED","output":"Sorry, I can't help with that."}}}}"#
        );
    } else {
        let input = rng.around(if embedding { 300.0 } else { 900.0 }).max(1);
        let output = if embedding { 0 } else { rng.around(350.0).max(1) };
        let prompt = text(rng, body / 2);
        let _ = write!(
            line,
            r#","input":{{"inputContentType":"application/json","inputBodyJson":{{"messages":[{{"role":"user","content":[{{"text":"{prompt}\nquote: \"ok\""}}]}}],"inferenceConfig":{{"maxTokens":1024}}}},"inputTokenCount":{input}"#
        );
        let mut hour_writes = 0;
        if caches && rng.chance(0.3) {
            let (read, write) = (rng.around(2000.0), rng.around(300.0));
            // Half the writers ask for a 1 h TTL on part of what they cache (Converse says so
            // in its body's `usage.cacheDetails`; a stream's chunks do not).
            if op != "InvokeModelWithResponseStream" && rng.chance(0.5) {
                hour_writes = write / 2;
            }
            let _ = write!(line, r#","cacheReadInputTokenCount":{read},"cacheWriteInputTokenCount":{write}"#);
        } else if caches {
            line.push_str(r#","cacheReadInputTokenCount":0,"cacheWriteInputTokenCount":0"#);
        }
        let answer = text(rng, body / 2);
        if embedding {
            line.push_str(r#"},"output":{"outputContentType":"application/json","outputBodyJson":{"embedding":[0.0123,-0.0456,0.0789],"inputTextTokenCount":0}}"#);
        } else if op == "InvokeModelWithResponseStream" {
            let _ = write!(
                line,
                r#"}},"output":{{"outputContentType":"application/json","outputBodyJson":[{{"type":"content_block_delta","delta":{{"text":"{answer}"}}}},{{"type":"message_stop","amazon-bedrock-invocationMetrics":{{"inputTokenCount":{input},"outputTokenCount":{output}}}}}],"outputTokenCount":{output}}}"#
            );
        } else {
            let details = if hour_writes > 0 {
                format!(r#","cacheDetails":[{{"ttl":"1h","inputTokens":{hour_writes}}}]"#)
            } else {
                String::new()
            };
            let _ = write!(
                line,
                r#"}},"output":{{"outputContentType":"application/json","outputBodyJson":{{"output":{{"message":{{"role":"assistant","content":[{{"text":"{answer}"}}]}}}},"stopReason":"end_turn","usage":{{"inputTokens":{input},"outputTokens":{output}{details}}}}},"outputTokenCount":{output}}}"#
            );
        }
    }
    if t.how == Attribution::Metadata && !unattributed {
        let _ = write!(line, r#","requestMetadata":{{"tenant_id":"{}","feature":"chat"}}"#, t.name);
    }
    line.push_str(r#","inferenceRegion":"us-east-1","schemaType":"ModelInvocationLog","schemaVersion":"1.0"}"#);
    (tenant, model_id, principal)
}

fn config_text(tenants: &[Tenant]) -> String {
    let mut s = String::from(
        "# Generated by `tally generate`: the config that matches the generated logs.\n\
         [store]\npath = \"tally.sqlite\"\n\n[ingest]\nquarantine = \"quarantine.jsonl\"\n\n\
         [tenancy]\norder = [\"request_metadata\", \"profile\", \"identity\"]\nmetadata_key = \"tenant_id\"\n\
         identity_pattern = 'assumed-role/tenant-(?P<tenant>[A-Za-z0-9_-]+)/'\n",
    );
    let _ = write!(s, "\n[[tenancy.profiles]]\nprofile = \"{SHARED_POOL}\"\nshared = true\nmodel = \"{POOL_MODEL}\"\n");
    for t in tenants.iter().filter(|t| t.how == Attribution::SiloAccount) {
        let _ = write!(s, "\n[[tenancy.accounts]]\naccount = \"{}\"\ntenant = \"{}\"\n", t.account, t.name);
    }
    for t in tenants.iter().filter(|t| t.how == Attribution::DedicatedProfile) {
        let _ = write!(
            s,
            "\n[[tenancy.profiles]]\nprofile = \"{}\"\ntenant = \"{}\"\nmodel = \"{AIP_MODEL}\"\n",
            t.aip, t.name
        );
    }
    s
}
