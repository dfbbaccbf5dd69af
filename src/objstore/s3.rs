//! S3-compatible object storage through the `object_store` crate (module doc of `objstore`:
//! why that crate).
//!
//! Every call blocks on a small runtime the store owns, with a deadline: `object_store`
//! retries 5xx answers, throttling and timeouts with exponential backoff until
//! `retry_timeout`, then the error names the endpoint, the operation and the object. TLS
//! endpoints are checked against the system's roots plus an optional CA file (a Ceph shop's
//! RGW often has a private CA); verification is never switched off. A plain `http://`
//! endpoint must be written as such by the operator, and is then used as asked.

use std::path::PathBuf;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore as _, PutPayload, RetryConfig};

use super::credentials::{credentials_from_env, load_credentials_file};
use super::{check_key, ObjectInfo, ObjectStore, StoreError};

/// How to reach an S3 store: everything but the bucket and prefix, which the location names.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// `https://host[:port]` (or `http://` when the operator means it); `None` for AWS itself
    /// or `AWS_ENDPOINT_URL` from the environment.
    pub endpoint: Option<String>,
    /// The region the endpoint signs for (RGW accepts its zonegroup's name or `us-east-1`).
    pub region: Option<String>,
    /// An AWS shared credentials file (0600); without it, the `AWS_*` environment.
    pub credentials_file: Option<PathBuf>,
    /// The profile in the credentials file.
    pub profile: String,
    /// Extra root certificates (PEM) for the endpoint's TLS.
    pub ca_file: Option<PathBuf>,
    /// How long one request may take before it counts as failed (and is retried).
    pub request_timeout: Duration,
    /// How long an operation may keep retrying before its error is returned.
    pub retry_timeout: Duration,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            endpoint: None,
            region: None,
            credentials_file: None,
            profile: "default".to_string(),
            ca_file: None,
            request_timeout: Duration::from_secs(60),
            retry_timeout: Duration::from_secs(120),
        }
    }
}

/// A bucket (and prefix) on an S3-compatible store.
pub struct S3Store {
    store: AmazonS3,
    runtime: tokio::runtime::Runtime,
    prefix: String,
    description: String,
    deadline: Duration,
}

/// Whether requests to `endpoint` (`None`: AWS, over HTTPS) hash their body into the SigV4
/// signature. Over TLS they do not (`UNSIGNED-PAYLOAD`, as AWS's own SDKs send over HTTPS):
/// TLS already protects every byte on the wire, and a signed payload costs a SHA-256 of every
/// block here and again in the gateway (on the lab, 0.8 s of CPU per GiB on each side). Over
/// plain HTTP the signature is what lets the gateway refuse a body changed on the way.
fn signs_payload(endpoint: Option<&str>) -> bool {
    endpoint.is_some_and(|e| e.starts_with("http://"))
}

impl S3Store {
    /// Sets up the client for `bucket`/`prefix`; sends nothing yet.
    pub fn open(bucket: &str, prefix: &str, options: &S3Options) -> Result<Self, StoreError> {
        let endpoint = options
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .filter(|e| !e.is_empty());
        let location = if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        };
        let description = match &endpoint {
            Some(e) => format!("{location} at {e}"),
            None => location,
        };
        let setup = |reason: String| StoreError::Setup {
            store: description.clone(),
            reason,
        };
        let credentials = match &options.credentials_file {
            Some(path) => load_credentials_file(path, &options.profile)?,
            None => credentials_from_env().ok_or(StoreError::NoCredentials)?,
        };
        let mut client = ClientOptions::new()
            .with_timeout(options.request_timeout)
            .with_connect_timeout(Duration::from_secs(10));
        if let Some(e) = &endpoint {
            if !(e.starts_with("https://") || e.starts_with("http://")) {
                return Err(setup(format!(
                    "endpoint '{e}' must start with https:// (or http:// for plain text on the wire)"
                )));
            }
            client = client.with_allow_http(e.starts_with("http://"));
        }
        if let Some(path) = &options.ca_file {
            let fail = |reason: String| StoreError::CaFile {
                path: path.clone(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
            let certificates = object_store::Certificate::from_pem_bundle(&pem)
                .map_err(|e| fail(format!("not PEM certificates: {e}")))?;
            if certificates.is_empty() {
                return Err(fail("holds no certificate".to_string()));
            }
            for certificate in certificates {
                client = client.with_root_certificate(certificate);
            }
        }
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(200),
                max_backoff: Duration::from_secs(10),
                base: 2.0,
            },
            max_retries: 10,
            retry_timeout: options.retry_timeout,
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(options.region.clone().unwrap_or_else(|| "us-east-1".into()))
            .with_access_key_id(credentials.access_key_id.expose())
            .with_secret_access_key(credentials.secret_access_key.expose())
            .with_client_options(client)
            .with_retry(retry);
        if let Some(token) = &credentials.session_token {
            builder = builder.with_token(token.expose());
        }
        builder = builder.with_unsigned_payload(!signs_payload(endpoint.as_deref()));
        if let Some(e) = &endpoint {
            // Path-style requests: RGW and MinIO serve them without wildcard DNS.
            builder = builder
                .with_endpoint(e)
                .with_virtual_hosted_style_request(false);
        }
        let store = builder.build().map_err(|e| setup(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vrb-s3")
            .enable_all()
            .build()
            .map_err(|e| setup(format!("starting the I/O runtime: {e}")))?;
        Ok(S3Store {
            store,
            runtime,
            prefix: prefix.to_string(),
            description,
            // One operation's bound: its retries, plus one last request.
            deadline: options.retry_timeout + options.request_timeout,
        })
    }

    fn path_of(&self, key: &str) -> Result<ObjectPath, StoreError> {
        check_key(key)?;
        Ok(if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        })
    }

    /// Runs one operation with the store's deadline and maps its error.
    fn run<T>(
        &self,
        operation: &'static str,
        key: &str,
        work: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Result<T, StoreError> {
        let outcome = self
            .runtime
            .block_on(async { tokio::time::timeout(self.deadline, work).await });
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.map_error(operation, key, e)),
            Err(_) => Err(StoreError::Io {
                store: self.description.clone(),
                operation,
                key: key.to_string(),
                reason: format!(
                    "no answer within {} s (endpoint down or unreachable?)",
                    self.deadline.as_secs()
                ),
            }),
        }
    }

    fn map_error(&self, operation: &'static str, key: &str, e: object_store::Error) -> StoreError {
        let store = self.description.clone();
        let key = key.to_string();
        match e {
            object_store::Error::NotFound { .. } => StoreError::NotFound { store, key },
            object_store::Error::PermissionDenied { source, .. }
            | object_store::Error::Unauthenticated { source, .. } => StoreError::Denied {
                store,
                operation,
                key,
                reason: source.to_string(),
            },
            other => StoreError::Io {
                store,
                operation,
                key,
                reason: error_chain(&other),
            },
        }
    }
}

/// An error and its sources in one line: the root cause (refused connection, unknown CA) is
/// usually at the bottom.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn put(&self, key: &str, data: Vec<u8>) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        self.run("put", key, self.store.put(&path, PutPayload::from(data)))?;
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path_of(key)?;
        let bytes = self.run("get", key, async {
            self.store.get(&path).await?.bytes().await
        })?;
        Ok(bytes.to_vec())
    }

    fn head(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let path = self.path_of(key)?;
        match self.run("head", key, self.store.head(&path)) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let trimmed = prefix.trim_end_matches('/');
        let full = match (self.prefix.is_empty(), trimmed.is_empty()) {
            (true, true) => None,
            (true, false) => Some(self.path_of(trimmed)?),
            (false, true) => Some(ObjectPath::from(self.prefix.as_str())),
            (false, false) => Some(self.path_of(trimmed)?),
        };
        let mut found: Vec<ObjectInfo> = self
            .run("list", prefix, async {
                self.store.list(full.as_ref()).try_collect::<Vec<_>>().await
            })?
            .into_iter()
            .filter_map(|meta| {
                let key = meta.location.as_ref();
                let key = if self.prefix.is_empty() {
                    key
                } else {
                    key.strip_prefix(self.prefix.as_str())?.strip_prefix('/')?
                };
                Some(ObjectInfo {
                    key: key.to_string(),
                    size: meta.size,
                })
            })
            .collect();
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        match self.run("delete", key, self.store.delete(&path)) {
            Ok(()) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::signs_payload;

    #[test]
    fn the_payload_is_signed_only_without_tls() {
        assert!(signs_payload(Some("http://127.0.0.1:7480")));
        assert!(!signs_payload(Some("https://rgw.example.net")));
        // No endpoint: AWS itself, over HTTPS.
        assert!(!signs_payload(None));
    }
}
