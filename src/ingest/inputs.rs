//! What `tally ingest` reads, and the jobs a pass hands its workers.

#[cfg(feature = "aws")]
use std::collections::HashMap;
use std::path::PathBuf;

use crate::source::files;
#[cfg(feature = "aws")]
use crate::source::{
    cloudwatch,
    remote::{Remote, SourceError},
    s3,
};
use crate::source::{Input, SourcesConfig};

use super::report::IngestError;
#[cfg(feature = "aws")]
use super::report::RunReport;

/// What `tally ingest` reads. Kept between the passes of `--follow`, so an S3 source
/// remembers the partitions it found.
pub struct Inputs {
    pub(super) paths: Vec<PathBuf>,
    #[cfg(feature = "aws")]
    pub(super) s3: Vec<s3::S3Source>,
    #[cfg(feature = "aws")]
    pub(super) logs: Vec<cloudwatch::LogsSource>,
    /// The SDK clients, when there is an AWS input.
    #[cfg(feature = "aws")]
    pub(super) remote: Option<Remote>,
}

impl Inputs {
    /// Files and directories only.
    pub fn paths(paths: &[PathBuf]) -> Inputs {
        Inputs {
            paths: paths.to_vec(),
            #[cfg(feature = "aws")]
            s3: Vec::new(),
            #[cfg(feature = "aws")]
            logs: Vec::new(),
            #[cfg(feature = "aws")]
            remote: None,
        }
    }

    /// Any inputs; AWS ones get SDK clients from the standard chain and `[sources]` (built
    /// here, without a network call).
    #[cfg_attr(not(feature = "aws"), allow(unused_variables))]
    pub fn new(inputs: Vec<Input>, sources: &SourcesConfig) -> Result<Inputs, IngestError> {
        let mut out = Inputs::paths(&[]);
        for input in inputs {
            match input {
                Input::Path(p) => out.paths.push(p),
                #[cfg(feature = "aws")]
                Input::S3(url) => out.s3.push(s3::S3Source::new(url, sources.s3_lookback_hours)),
                #[cfg(feature = "aws")]
                Input::Logs(url) => out.logs.push(cloudwatch::LogsSource::new(url)),
            }
        }
        #[cfg(feature = "aws")]
        if !out.s3.is_empty() || !out.logs.is_empty() {
            out.remote = Some(Remote::new(&sources.aws()).map_err(IngestError::Input)?);
        }
        Ok(out)
    }

    /// Lists what is new in the AWS inputs.
    #[cfg(feature = "aws")]
    pub(super) fn plan_remote(
        &mut self,
        checkpoints: &HashMap<String, String>,
        jobs: &mut Vec<Job>,
        report: &mut RunReport,
    ) -> Result<(), SourceError> {
        let Some(remote) = &self.remote else { return Ok(()) };
        for source in &mut self.s3 {
            for job in source.plan(remote, checkpoints)? {
                report.objects_read += job.objects.len() as u64;
                jobs.push(Job::S3(job));
            }
        }
        for source in &self.logs {
            for job in source.plan(remote, checkpoints)? {
                report.streams_read += 1;
                jobs.push(Job::Stream(job));
            }
        }
        Ok(())
    }
}

/// One unit of work for a worker: a file, an S3 partition's new objects, a log stream.
pub(super) enum Job {
    File(files::FileJob),
    #[cfg(feature = "aws")]
    S3(s3::S3Job),
    #[cfg(feature = "aws")]
    Stream(cloudwatch::StreamJob),
}

impl Job {
    /// Bytes to read, for progress (unknown for a log stream).
    pub(super) fn size(&self) -> u64 {
        match self {
            Job::File(j) => j.size,
            #[cfg(feature = "aws")]
            Job::S3(j) => j.size(),
            #[cfg(feature = "aws")]
            Job::Stream(_) => 0,
        }
    }
}
