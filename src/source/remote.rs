//! What the AWS sources share: the SDK clients and the runtime their calls run on, the error
//! type of the source boundary, and a blocking reader over an object body.
//!
//! Ingest workers are plain threads; they call the async SDK through [`Remote::block_on`].
//! Every SDK call already retries throttling, 5xx and network errors with backoff and jitter
//! (see [`crate::aws`]); what reaches a source is a failure that persisted, or one the SDK
//! cannot retry (a body cut off mid-stream), which the sources retry themselves.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;

use super::stream::Fetch;
use crate::aws::AwsSettings;

/// The SDK clients the sources use, and the runtime they run on.
pub struct Remote {
    rt: tokio::runtime::Runtime,
    pub s3: aws_sdk_s3::Client,
    pub logs: aws_sdk_cloudwatchlogs::Client,
}

impl Remote {
    /// Builds the clients from the standard AWS chain plus `settings` (no network yet).
    pub fn new(settings: &AwsSettings) -> io::Result<Remote> {
        let rt = crate::aws::runtime()?;
        let config = crate::aws::block_on(&rt, crate::aws::sdk_config(settings));
        let s3 = crate::aws::s3_client(&config, settings);
        let logs = aws_sdk_cloudwatchlogs::Client::new(&config);
        Ok(Remote { rt, s3, logs })
    }

    /// Runs an SDK call to completion from a worker thread.
    pub fn block_on<F>(&self, fut: F) -> F::Output
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        crate::aws::block_on(&self.rt, fut)
    }
}

/// A source that could not be read, shaped by what the caller does about it.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The bucket, object, log group or stream does not exist.
    #[error("{what}: not found ({detail})")]
    NotFound { what: String, detail: String },
    /// The credentials may not read it.
    #[error("{what}: access denied ({detail})")]
    Denied { what: String, detail: String },
    /// The service kept failing after retries; reading again later may work.
    #[error("{what}: {detail}")]
    Unavailable { what: String, detail: String },
}

impl SourceError {
    /// Classifies a failed SDK call on `what` (e.g. `s3://bucket/key`).
    pub fn from_sdk<E, R>(what: impl Into<String>, e: &aws_sdk_s3::error::SdkError<E, R>) -> SourceError
    where
        E: std::error::Error + aws_sdk_s3::error::ProvideErrorMetadata + 'static,
        R: std::fmt::Debug,
    {
        use aws_sdk_s3::error::SdkError;
        let what = what.into();
        let detail = aws_sdk_s3::error::DisplayErrorContext(e).to_string();
        let code = match e {
            SdkError::ServiceError(s) => s.err().code().unwrap_or_default().to_string(),
            _ => String::new(),
        };
        match code.as_str() {
            "NoSuchBucket" | "NoSuchKey" | "NotFound" | "ResourceNotFoundException" => {
                SourceError::NotFound { what, detail }
            }
            "AccessDenied"
            | "AccessDeniedException"
            | "UnrecognizedClientException"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "ExpiredToken"
            | "ExpiredTokenException" => SourceError::Denied { what, detail },
            _ => SourceError::Unavailable { what, detail },
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, SourceError::Unavailable { .. })
    }
}

/// A blocking [`Read`] over an object body, for the line splitter and the gzip decoder. A body
/// that fails mid-stream gives a [`Fetch`] error, so the reader fetches again from the position
/// reached instead of quarantining the cut.
pub struct Body<'r> {
    remote: &'r Remote,
    what: &'r str,
    stream: ByteStream,
    chunk: bytes::Bytes,
    counter: Arc<AtomicU64>,
}

impl<'r> Body<'r> {
    /// `counter` gets the bytes received, for progress.
    pub fn new(remote: &'r Remote, what: &'r str, stream: ByteStream, counter: Arc<AtomicU64>) -> Self {
        Body { remote, what, stream, chunk: bytes::Bytes::new(), counter }
    }
}

impl Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            let next = self.remote.block_on(self.stream.next());
            match next {
                None => return Ok(0),
                Some(Ok(bytes)) => {
                    self.counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    self.chunk = bytes;
                }
                Some(Err(e)) => {
                    return Err(Fetch::io(format!(
                        "{}: body cut off: {}",
                        self.what,
                        aws_sdk_s3::error::DisplayErrorContext(&e)
                    )))
                }
            }
        }
        let n = self.chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}
