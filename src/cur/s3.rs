//! `--cur s3://bucket/prefix` (parsed as the log source's `S3Url`): the CUR read from S3
//! through an object store that makes its requests with the official AWS SDK (the `aws`
//! feature).
//!
//! `cur::load` reads Parquet through the `object_store` trait (as DataFusion does): it asks for
//! byte ranges of an object (the footer, then only the column chunks it needs). [`SdkStore`]
//! answers those with `HeadObject`, ranged `GetObject` and `ListObjectsV2`, so a CUR in S3 is
//! read with the same credentials chain, endpoint (`[sources] endpoint_url`, e.g. moto), retries
//! and timeouts as every other AWS call tally makes (see `crate::aws`). It is read-only: writes,
//! copies and deletes answer "not supported"; tally never writes to the billing bucket.
//!
//! Which objects: [`list_period`] lists the prefix and keeps `.parquet` objects whose folders
//! are compatible with the period, by the same partition rule as a local folder
//! (`partition::partition_matches`).

use std::fmt;
use std::ops::Range;

use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use datafusion::object_store::path::Path;
use datafusion::object_store::{
    Attributes, CopyOptions, Error as StoreError, GetOptions, GetRange, GetResult, GetResultPayload, ListResult,
    MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    Result as StoreResult,
};
use futures::stream::{self, BoxStream, StreamExt};

use crate::aws::AwsSettings;
use crate::aws::S3Url;

const STORE: &str = "S3 (AWS SDK)";

/// A read-only `ObjectStore` over one bucket, backed by the AWS SDK's S3 client.
#[derive(Clone)]
pub struct SdkStore {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl fmt::Debug for SdkStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SdkStore(s3://{})", self.bucket)
    }
}

impl fmt::Display for SdkStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}", self.bucket)
    }
}

impl SdkStore {
    /// The client from the standard AWS chain plus `settings` (no network yet). Must run
    /// inside a tokio runtime.
    pub async fn connect(settings: &AwsSettings, bucket: &str) -> SdkStore {
        let config = crate::aws::sdk_config(settings).await;
        SdkStore { client: crate::aws::s3_client(&config, settings), bucket: bucket.to_string() }
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// Every object under `prefix` (a raw key prefix, not segment-aligned), with its size.
    pub async fn list_keys(&self, prefix: &str) -> StoreResult<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = self.client.list_objects_v2().bucket(&self.bucket).prefix(prefix);
            if let Some(t) = &token {
                req = req.continuation_token(t);
            }
            let page = req.send().await.map_err(|e| sdk_error(&self.url(prefix), e))?;
            for o in page.contents() {
                let Some(key) = o.key() else { continue };
                out.push(ObjectMeta {
                    location: object_path(key)?,
                    last_modified: o.last_modified().map(to_chrono).unwrap_or_default(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    e_tag: o.e_tag().map(str::to_string),
                    version: None,
                });
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    async fn head(&self, location: &Path) -> StoreResult<ObjectMeta> {
        let key = location.as_ref();
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| sdk_error(&self.url(key), e))?;
        Ok(ObjectMeta {
            location: location.clone(),
            last_modified: head.last_modified().map(to_chrono).unwrap_or_default(),
            size: head.content_length().unwrap_or(0).max(0) as u64,
            e_tag: head.e_tag().map(str::to_string),
            version: head.version_id().map(str::to_string),
        })
    }
}

/// The period's Parquet objects under `url`, sorted by key, with their sizes.
pub async fn list_period(store: &SdkStore, url: &S3Url, year: i32, month: u32) -> StoreResult<Vec<ObjectMeta>> {
    let mut objects = store.list_keys(&url.prefix).await?;
    objects.retain(|o| {
        let key = o.location.as_ref();
        let rel = key.strip_prefix(url.prefix.as_str()).unwrap_or(key);
        let mut parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
        let Some(name) = parts.pop() else { return false };
        name.ends_with(".parquet")
            && !name.starts_with('.')
            && parts.iter().all(|folder| super::partition::partition_matches(folder, year, month))
    });
    objects.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(objects)
}

fn object_path(key: &str) -> StoreResult<Path> {
    Path::parse(key).map_err(|e| StoreError::Generic { store: STORE, source: Box::new(e) })
}

fn to_chrono(t: &aws_sdk_s3::primitives::DateTime) -> DateTime<Utc> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos()).unwrap_or_default()
}

/// An SDK failure as the store error the Parquet reader expects (not found and denied kept apart).
fn sdk_error<E>(what: &str, e: SdkError<E, HttpResponse>) -> StoreError
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
{
    let code = match &e {
        SdkError::ServiceError(s) => s.err().code().unwrap_or_default().to_string(),
        _ => String::new(),
    };
    let not_found = matches!(&e, SdkError::ServiceError(s) if s.raw().status().as_u16() == 404);
    // A service error as its code and message; anything else (network, timeout) in full.
    let detail: Box<dyn std::error::Error + Send + Sync> = match &e {
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            format!(
                "{} (HTTP {status}): {}",
                if code.is_empty() { "error" } else { code.as_str() },
                s.err().message().unwrap_or("no message")
            )
            .into()
        }
        _ => DisplayErrorContext(&e).to_string().into(),
    };
    match code.as_str() {
        _ if not_found => StoreError::NotFound { path: what.to_string(), source: detail },
        "NoSuchBucket" | "NoSuchKey" | "NotFound" => StoreError::NotFound { path: what.to_string(), source: detail },
        "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken" => {
            StoreError::PermissionDenied { path: what.to_string(), source: detail }
        }
        _ => StoreError::Generic { store: STORE, source: detail },
    }
}

/// `Content-Range: bytes <start>-<end>/<size>` → (start..end+1, size).
fn content_range(header: &str) -> Option<(Range<u64>, u64)> {
    let rest = header.trim().strip_prefix("bytes ")?;
    let (span, size) = rest.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    let (start, end): (u64, u64) = (start.parse().ok()?, end.parse().ok()?);
    Some((start..end + 1, size.parse().ok()?))
}

fn read_only(operation: &str) -> StoreError {
    StoreError::NotSupported {
        source: format!("{operation}: tally reads the CUR bucket and never writes to it").into(),
    }
}

#[async_trait]
impl ObjectStore for SdkStore {
    async fn put_opts(&self, _: &Path, _: PutPayload, _: PutOptions) -> StoreResult<PutResult> {
        Err(read_only("put"))
    }

    async fn put_multipart_opts(&self, _: &Path, _: PutMultipartOptions) -> StoreResult<Box<dyn MultipartUpload>> {
        Err(read_only("multipart put"))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> StoreResult<GetResult> {
        if options.head {
            let meta = self.head(location).await?;
            return Ok(GetResult {
                payload: GetResultPayload::Stream(stream::empty().boxed()),
                range: 0..meta.size,
                meta,
                attributes: Attributes::default(),
            });
        }
        let key = location.as_ref();
        let mut req = self.client.get_object().bucket(&self.bucket).key(key);
        if let Some(range) = &options.range {
            req = req.range(match range {
                GetRange::Bounded(r) if r.start >= r.end => {
                    return Err(StoreError::Generic {
                        store: STORE,
                        source: format!("{}: empty range {r:?}", self.url(key)).into(),
                    })
                }
                GetRange::Bounded(r) => format!("bytes={}-{}", r.start, r.end - 1),
                GetRange::Offset(o) => format!("bytes={o}-"),
                GetRange::Suffix(n) => format!("bytes=-{n}"),
            });
        }
        if let Some(tag) = &options.if_match {
            req = req.if_match(tag);
        }
        if let Some(tag) = &options.if_none_match {
            req = req.if_none_match(tag);
        }
        let out = req.send().await.map_err(|e| sdk_error(&self.url(key), e))?;
        let length = out.content_length().unwrap_or(0).max(0) as u64;
        let (range, size) = match out.content_range().and_then(content_range) {
            Some((range, size)) => (range, size),
            None => (0..length, length),
        };
        let meta = ObjectMeta {
            location: location.clone(),
            last_modified: out.last_modified().map(to_chrono).unwrap_or_default(),
            size,
            e_tag: out.e_tag().map(str::to_string),
            version: out.version_id().map(str::to_string),
        };
        let what = self.url(key);
        let body = stream::unfold((out.body, what), |(mut body, what)| async move {
            match body.next().await {
                None => None,
                Some(Ok(chunk)) => Some((Ok::<Bytes, StoreError>(chunk), (body, what))),
                Some(Err(e)) => {
                    let err = StoreError::Generic { store: STORE, source: format!("{what}: body cut off: {e}").into() };
                    Some((Err(err), (body, what)))
                }
            }
        });
        Ok(GetResult {
            payload: GetResultPayload::Stream(body.boxed()),
            meta,
            range,
            attributes: Attributes::default(),
        })
    }

    fn delete_stream(&self, locations: BoxStream<'static, StoreResult<Path>>) -> BoxStream<'static, StoreResult<Path>> {
        locations.map(|_| Err(read_only("delete"))).boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, StoreResult<ObjectMeta>> {
        // Segment-aligned, as the trait asks: `a/b` lists `a/b/…`, not `a/bc`.
        let prefix = prefix.map(|p| format!("{}/", p.as_ref())).filter(|p| p != "/").unwrap_or_default();
        let store = self.clone();
        stream::once(async move { store.list_keys(&prefix).await })
            .flat_map(|r| match r {
                Ok(all) => stream::iter(all.into_iter().map(Ok)).boxed(),
                Err(e) => stream::once(async move { Err(e) }).boxed(),
            })
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> StoreResult<ListResult> {
        let base = prefix.map(|p| format!("{}/", p.as_ref())).filter(|p| p != "/").unwrap_or_default();
        let mut objects = Vec::new();
        let mut folders = std::collections::BTreeSet::new();
        for meta in self.list_keys(&base).await? {
            let rest = &meta.location.as_ref()[base.len()..];
            match rest.split_once('/') {
                Some((folder, _)) => {
                    folders.insert(format!("{base}{folder}"));
                }
                None => objects.push(meta),
            }
        }
        let common_prefixes = folders.iter().map(|f| object_path(f)).collect::<StoreResult<_>>()?;
        Ok(ListResult { common_prefixes, objects })
    }

    async fn copy_opts(&self, _: &Path, _: &Path, _: CopyOptions) -> StoreResult<()> {
        Err(read_only("copy"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(content_range("bytes 0-99/1234"), Some((0..100, 1234)));
        assert_eq!(content_range("bytes 1200-1233/1234"), Some((1200..1234, 1234)));
        assert_eq!(content_range("bytes */1234"), None);
    }
}
