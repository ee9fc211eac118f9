//! The one place tally builds its AWS SDK configuration (the `aws` feature).
//!
//! Credentials and the default region come from the standard AWS chain (environment,
//! `~/.aws/config` profile, SSO, container or instance role); tally's config never holds a
//! secret. Two settings can be overridden from `tally.toml`: the region and an endpoint URL for a
//! local or other endpoint (moto, a VPC endpoint). The standard chain also honours
//! `AWS_ENDPOINT_URL` (and per-service variables such as `AWS_ENDPOINT_URL_DYNAMODB`); an
//! `endpoint_url` in the config wins over them.
//!
//! Retries: every SDK call retries throttling, 5xx and transient network errors with
//! exponential backoff and full jitter (the SDK's standard retry mode), up to
//! [`MAX_ATTEMPTS`] attempts. Callers add their own retries only for failures the SDK cannot
//! classify, such as a DynamoDB transaction cancelled for throttling.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

/// Attempts per SDK call (the first try and its retries).
pub const MAX_ATTEMPTS: u32 = 8;

/// Where and how to reach AWS. Plain data, from the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsSettings {
    /// Overrides the region of the standard chain.
    pub region: Option<String>,
    /// Overrides the endpoint (e.g. `http://127.0.0.1:5000` for moto).
    pub endpoint_url: Option<String>,
    /// Attempts per call; `None` means [`MAX_ATTEMPTS`].
    pub max_attempts: Option<u32>,
}

/// `s3://bucket/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    pub prefix: String,
}

impl S3Url {
    pub fn parse(url: &str) -> Result<S3Url, String> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| format!("{url}: an S3 source is s3://bucket[/prefix]"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("{url}: the bucket name is missing (s3://bucket[/prefix])"));
        }
        Ok(S3Url { bucket: bucket.to_string(), prefix: prefix.to_string() })
    }
}

impl std::fmt::Display for S3Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// Builds the shared SDK configuration from the standard chain plus the overrides.
pub async fn sdk_config(settings: &AwsSettings) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(settings.max_attempts.unwrap_or(MAX_ATTEMPTS).max(1))
                .with_initial_backoff(Duration::from_millis(50))
                .with_max_backoff(Duration::from_secs(5)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(30))
                .build(),
        );
    if let Some(region) = &settings.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &settings.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    loader.load().await
}

/// The S3 client for `config` (built from `settings`). Local endpoints (moto, MinIO) only know
/// path-style bucket addressing, so an endpoint override turns it on.
pub fn s3_client(config: &SdkConfig, settings: &AwsSettings) -> aws_sdk_s3::Client {
    let s3 = aws_sdk_s3::config::Builder::from(config).force_path_style(settings.endpoint_url.is_some()).build();
    aws_sdk_s3::Client::from_conf(s3)
}

/// A small runtime for the synchronous parts of tally that call the async SDK.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("tally-aws").enable_all().build()
}

/// Runs a future to completion on `rt`, also when called from inside another runtime (where
/// `block_on` would panic): then it runs on a scoped thread.
pub fn block_on<F>(rt: &tokio::runtime::Runtime, fut: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(|| rt.block_on(fut)).join().expect("the AWS call panicked"))
    } else {
        rt.block_on(fut)
    }
}
