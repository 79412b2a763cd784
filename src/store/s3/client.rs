//! The S3 client of a remote store: `object_store`'s S3 client (endpoint, region and
//! credentials from the usual `AWS_*` variables) on a small tokio runtime of its own, every
//! call blocking. Knows keys and bytes, nothing of objects or refs.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as Key;
use object_store::{
    ClientOptions, ObjectStore as _, ObjectStoreExt as _, PutMode, PutOptions, PutPayload,
    RetryConfig, UpdateVersion,
};

use super::{
    CONCURRENCY, Listed, Outcome, Put, RemoteError, StoreUrl, Trouble, Version, rand_suffix,
};

impl Version {
    fn of(v: UpdateVersion) -> Version {
        Version {
            e_tag: v.e_tag,
            version: v.version,
        }
    }

    fn to_update(&self) -> UpdateVersion {
        UpdateVersion {
            e_tag: self.e_tag.clone(),
            version: self.version.clone(),
        }
    }
}

/// `endpoint` without a `user:password@` before its host: it is shown in messages, and
/// probed by host and port.
fn without_userinfo(endpoint: &str) -> String {
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return endpoint.to_owned();
    };
    let end = rest
        .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
        .unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => endpoint.to_owned(),
    }
}

/// `text` with every URL's `user:password@` taken out.
fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        // The scheme's letters before "://" are kept as they are.
        out.push_str(&rest[..at]);
        let url = &rest[at..];
        let end = url[3..]
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .map_or(url.len(), |e| e + 3);
        match url[3..end].rfind('@') {
            Some(user) => {
                out.push_str("://");
                out.push_str(&url[3 + user + 1..end]);
            }
            None => out.push_str(&url[..end]),
        }
        rest = &url[end..];
    }
    out.push_str(rest);
    out
}

/// A connection to a remote store. Cheap to share (`Arc`); every method blocks.
pub struct Remote {
    url: StoreUrl,
    endpoint: String,
    store: Arc<dyn object_store::ObjectStore>,
    runtime: tokio::runtime::Runtime,
    /// Objects this process has seen stored remotely (written or found existing).
    confirmed: Mutex<HashSet<[u8; 32]>>,
    /// Set once the store answered a listing (a failure is not kept: the next call tries
    /// again, so a long-running process outlives a blip).
    reachable: OnceLock<()>,
    /// The conditional-write check's verdict, once one was reached.
    conditional: OnceLock<Result<(), String>>,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish()
    }
}

fn env_duration(name: &str, default: Duration) -> Duration {
    std::env::var(name)
        .ok()
        .and_then(|v| humantime::parse_duration(v.trim()).ok())
        .unwrap_or(default)
}

/// How long a connection to the endpoint may take (`PRODIGY_S3_CONNECT_TIMEOUT`, 5 s by
/// default): separate from a request's time-out, so that an unreachable host fails fast.
fn connect_timeout() -> Duration {
    env_duration("PRODIGY_S3_CONNECT_TIMEOUT", Duration::from_secs(5))
}

impl Remote {
    /// Connects (lazily: no request is made here) to `url` with the endpoint, region and
    /// credentials of the `AWS_*` variables. An `http://` endpoint is allowed as given.
    pub fn open(url: &str) -> Result<Remote, RemoteError> {
        let parsed = StoreUrl::parse(url)?;
        let config = |reason: String| RemoteError::Config {
            url: url.to_owned(),
            reason,
        };
        let endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
            .unwrap_or_default();
        let client = ClientOptions::new()
            .with_timeout(env_duration("PRODIGY_S3_TIMEOUT", Duration::from_secs(30)))
            .with_connect_timeout(connect_timeout())
            .with_allow_http(endpoint.starts_with("http://"));
        let retry = RetryConfig {
            max_retries: 10,
            retry_timeout: env_duration("PRODIGY_S3_RETRY_TIMEOUT", Duration::from_secs(20)),
            ..RetryConfig::default()
        };
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&parsed.bucket)
            .with_client_options(client)
            .with_retry(retry)
            .with_conditional_put(S3ConditionalPut::ETagMatch);
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            builder = builder.with_region("us-east-1");
        }
        let store = builder.build().map_err(|e| config(describe(&e)))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("prodigy-s3")
            .enable_all()
            .build()
            .map_err(|e| config(format!("cannot start the client's runtime: {e}")))?;
        Ok(Remote {
            url: parsed,
            endpoint: if endpoint.is_empty() {
                "the AWS endpoint".into()
            } else {
                without_userinfo(&endpoint)
            },
            store: Arc::new(store),
            runtime,
            confirmed: Mutex::new(HashSet::new()),
            reachable: OnceLock::new(),
            conditional: OnceLock::new(),
        })
    }

    /// The store's address.
    pub fn url(&self) -> &StoreUrl {
        &self.url
    }

    /// The `s3://` address of a key.
    pub fn address(&self, key: &str) -> String {
        format!("{}/{key}", self.url).replace("s3:///", "s3://")
    }

    fn key(&self, key: &str) -> Key {
        if self.url.prefix.is_empty() {
            Key::from(key)
        } else {
            Key::from(format!("{}/{key}", self.url.prefix))
        }
    }

    fn unkey(&self, key: &Key) -> String {
        let full = key.as_ref();
        if self.url.prefix.is_empty() {
            full.to_owned()
        } else {
            full.strip_prefix(&self.url.prefix)
                .map(|k| k.trim_start_matches('/'))
                .unwrap_or(full)
                .to_owned()
        }
    }

    fn failed(&self, op: &'static str, key: &str, e: &object_store::Error) -> RemoteError {
        let mut reason = describe(e);
        let mut trouble = Trouble::Other;
        if reason.contains("NoSuchBucket") || reason.contains("bucket does not exist") {
            reason = format!("the bucket '{}' does not exist", self.url.bucket);
            trouble = Trouble::NoBucket;
        } else if is_connect(&reason) {
            let lower = reason.to_ascii_lowercase();
            let why = if lower.contains("connection refused") {
                "connection refused"
            } else if lower.contains("dns error") {
                "the host name does not resolve"
            } else if lower.contains("timed out") || lower.contains("timeout") {
                "timed out"
            } else {
                "connection failed"
            };
            reason = format!("cannot reach {} ({why})", self.endpoint);
            trouble = Trouble::Unreachable;
        }
        RemoteError::Request {
            op,
            url: self.address(key),
            reason,
            trouble,
        }
    }

    /// One cheap listing, once per process, so that a wrong endpoint, a missing bucket or
    /// wrong credentials are reported as such before anything else. A TCP connection to
    /// the endpoint is tried first, within the connect time-out: a host that does not
    /// answer fails in seconds, not after the client's retries.
    pub fn check(&self) -> Result<(), RemoteError> {
        if self.reachable.get().is_some() {
            return Ok(());
        }
        if let Some(why) = self.probe() {
            return Err(RemoteError::Request {
                op: "reach the store",
                url: self.url.to_string(),
                reason: format!("cannot reach {} ({why})", self.endpoint),
                trouble: Trouble::Unreachable,
            });
        }
        let prefix = (!self.url.prefix.is_empty()).then(|| Key::from(self.url.prefix.as_str()));
        match self
            .runtime
            .block_on(self.store.list_with_delimiter(prefix.as_ref()))
        {
            Ok(_) => {
                let _ = self.reachable.set(());
                Ok(())
            }
            Err(e) => Err(match self.failed("list", "", &e) {
                RemoteError::Request {
                    reason, trouble, ..
                } => RemoteError::Request {
                    op: "reach the store",
                    url: self.url.to_string(),
                    reason,
                    trouble,
                },
                other => other,
            }),
        }
    }

    /// Why a TCP connection to the endpoint cannot be made, if it cannot (an endpoint that
    /// is not `http(s)://host[:port]`, such as AWS's own, is left to the client).
    fn probe(&self) -> Option<String> {
        use std::net::{TcpStream, ToSocketAddrs};
        let (scheme, rest) = self.endpoint.split_once("://")?;
        let authority = rest.split('/').next()?;
        let port = if scheme == "https" { 443 } else { 80 };
        let target = match authority.rsplit_once(':') {
            Some((_, p)) if p.parse::<u16>().is_ok() => authority.to_owned(),
            _ => format!("{authority}:{port}"),
        };
        let addrs: Vec<_> = match target.to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(_) => return Some("the host name does not resolve".into()),
        };
        let limit = connect_timeout();
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, limit) {
                Ok(_) => return None,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    last = Some(format!(
                        "no answer within {} (PRODIGY_S3_CONNECT_TIMEOUT)",
                        humantime::format_duration(limit)
                    ));
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    last = Some("connection refused".into());
                }
                Err(e) => last = Some(e.to_string()),
            }
        }
        last
    }

    /// Checks once per process that the server refuses a second create of one key and a
    /// replace with a stale version. A server that ignores either would let two writers
    /// overwrite each other, so nothing is written to it.
    pub fn check_conditional(&self) -> Result<(), RemoteError> {
        self.check()?;
        let verdict = |reason: &String| RemoteError::NoConditionalWrites {
            url: self.url.to_string(),
            reason: reason.clone(),
        };
        if let Some(known) = self.conditional.get() {
            return known.as_ref().map_err(verdict).cloned();
        }
        {
            let key = crate::store::keys::probe(&format!(
                "{}-{}-{}",
                std::process::id(),
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
                rand_suffix()
            ));
            let outcome = (|| {
                let first = self.put(&key, b"1".to_vec(), Put::Create)?;
                let Outcome::Written(version) = first else {
                    return Ok(Err("a new key already existed".to_owned()));
                };
                if self.put(&key, b"2".to_vec(), Put::Create)? != Outcome::Conflict {
                    return Ok(Err(
                        "a create with If-None-Match: * replaced an existing key".to_owned(),
                    ));
                }
                let stale = Version::of(UpdateVersion {
                    e_tag: Some("\"0000000000000000\"".into()),
                    version: None,
                });
                if self.put(&key, b"3".to_vec(), Put::Replace(stale))? != Outcome::Conflict {
                    return Ok(Err(
                        "a replace with a stale If-Match was accepted".to_owned()
                    ));
                }
                if self.put(&key, b"4".to_vec(), Put::Replace(version))? == Outcome::Conflict {
                    return Ok(Err(
                        "a replace with the current If-Match was refused".to_owned()
                    ));
                }
                Ok::<_, RemoteError>(Ok(()))
            })();
            let _ = self.delete(&key);
            // A verdict is kept for the process; a failed request is not (tried again).
            let found = outcome?;
            let known = self.conditional.get_or_init(|| found);
            known.as_ref().map_err(verdict).cloned()
        }
    }

    /// Reads a key; `None` when it does not exist.
    pub fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Version)>, RemoteError> {
        self.check()?;
        let path = self.key(key);
        let result = self.runtime.block_on(async {
            let got = self.store.get(&path).await?;
            let version = UpdateVersion {
                e_tag: got.meta.e_tag.clone(),
                version: got.meta.version.clone(),
            };
            let bytes = got.bytes().await?;
            Ok::<_, object_store::Error>((bytes.to_vec(), Version::of(version)))
        });
        match result {
            Ok(found) => Ok(Some(found)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failed("read", key, &e)),
        }
    }

    /// Reads many keys at once; `None` for those that do not exist. In the order given.
    pub fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, RemoteError> {
        self.check()?;
        self.runtime.block_on(async {
            futures::stream::iter(keys.iter().map(|key| async move {
                match self.store.get(&self.key(key)).await {
                    Ok(got) => got
                        .bytes()
                        .await
                        .map(|b| Some(b.to_vec()))
                        .map_err(|e| self.failed("read", key, &e)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(self.failed("read", key, &e)),
                }
            }))
            .buffered(CONCURRENCY)
            .try_collect()
            .await
        })
    }

    /// Whether a key exists.
    pub fn exists(&self, key: &str) -> Result<bool, RemoteError> {
        self.check()?;
        match self.runtime.block_on(self.store.head(&self.key(key))) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.failed("look up", key, &e)),
        }
    }

    /// A conditional write.
    pub fn put(&self, key: &str, bytes: Vec<u8>, mode: Put) -> Result<Outcome, RemoteError> {
        self.check()?;
        self.runtime.block_on(self.put_async(key, bytes, mode))
    }

    async fn put_async(
        &self,
        key: &str,
        bytes: Vec<u8>,
        mode: Put,
    ) -> Result<Outcome, RemoteError> {
        let mode = match mode {
            Put::Create => PutMode::Create,
            Put::Replace(v) => PutMode::Update(v.to_update()),
        };
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&self.key(key), PutPayload::from(bytes), opts)
            .await
        {
            Ok(done) => Ok(Outcome::Written(Version::of(UpdateVersion::from(done)))),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(Outcome::Conflict),
            // A replace of a key that does not exist (S3 answers 404 to If-Match then).
            Err(object_store::Error::NotFound { .. }) => Ok(Outcome::Conflict),
            Err(e) => Err(self.failed("write", key, &e)),
        }
    }

    /// Creates many keys at once; existing keys are left as they are.
    /// Each body is copied only when its upload starts, so no more than
    /// `CONCURRENCY` copies are held at once.
    pub fn create_many(&self, items: &[(String, &[u8])]) -> Result<(), RemoteError> {
        if items.is_empty() {
            return Ok(());
        }
        self.check_conditional()?;
        self.runtime.block_on(async {
            futures::stream::iter(items.iter().map(|(key, bytes)| async move {
                self.put_async(key, bytes.to_vec(), Put::Create).await
            }))
            .buffer_unordered(CONCURRENCY)
            .try_for_each(|_| async { Ok(()) })
            .await
        })
    }

    /// Every key under `dir` (`objects/`, `refs/events/`…), sorted.
    pub fn list(&self, dir: &str) -> Result<Vec<Listed>, RemoteError> {
        self.check()?;
        let prefix = self.key(dir.trim_end_matches('/'));
        let mut listed: Vec<Listed> = self
            .runtime
            .block_on(self.store.list(Some(&prefix)).try_collect::<Vec<_>>())
            .map_err(|e| self.failed("list", dir, &e))?
            .into_iter()
            .map(|meta| Listed {
                key: self.unkey(&meta.location),
                size: meta.size,
                modified: SystemTime::from(meta.last_modified),
            })
            .collect();
        listed.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(listed)
    }

    /// Deletes a key (no error when it is already gone).
    pub fn delete(&self, key: &str) -> Result<(), RemoteError> {
        self.check()?;
        match self.runtime.block_on(self.store.delete(&self.key(key))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed("delete", key, &e)),
        }
    }

    /// Deletes many keys.
    pub fn delete_many(&self, keys: &[String]) -> Result<(), RemoteError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.check()?;
        self.runtime.block_on(async {
            futures::stream::iter(keys.iter().map(|key| async move {
                match self.store.delete(&self.key(key)).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(self.failed("delete", key, &e)),
                }
            }))
            .buffer_unordered(CONCURRENCY)
            .try_for_each(|_| async { Ok(()) })
            .await
        })
    }

    /// Notes that an object is stored remotely.
    pub fn confirm(&self, id: [u8; 32]) {
        self.confirmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
    }

    /// Whether this process has seen the object stored remotely.
    pub fn is_confirmed(&self, id: &[u8; 32]) -> bool {
        self.confirmed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }
}

/// The connection to `url`, one per address per process (so the runtime, the checks and
/// the set of confirmed objects are shared by every store handle).
pub fn shared(url: &str) -> Result<Arc<Remote>, RemoteError> {
    static OPEN: OnceLock<Mutex<std::collections::HashMap<String, Arc<Remote>>>> = OnceLock::new();
    let mut open = OPEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(remote) = open.get(url) {
        return Ok(remote.clone());
    }
    let remote = Arc::new(Remote::open(url)?);
    open.insert(url.to_owned(), remote.clone());
    Ok(remote)
}

fn is_connect(reason: &str) -> bool {
    let lower = reason.to_ascii_lowercase();
    lower.contains("error sending request")
        || lower.contains("connection refused")
        || lower.contains("dns error")
        || lower.contains("tcp connect")
        || lower.contains("client error (connect)")
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

/// An `object_store` error in one line: its chain of causes, with the S3 error code and
/// message picked out of an XML body, and a word on what to check for the usual ones.
pub fn describe(e: &object_store::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cause: Option<&dyn std::error::Error> = Some(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cause = c.source();
    }
    // An endpoint's `user:password@` is never shown (the client's errors quote its URLs).
    let full = redact_userinfo(&parts.join(": "));
    let code = xml_field(&full, "Code");
    let message = xml_field(&full, "Message");
    let status = ["401", "403", "404", "412", "429", "500", "501", "503"]
        .into_iter()
        .find(|s| full.contains(&format!("status {s}")) || full.contains(&format!("{s} ")));
    let mut line = match (&code, &message) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.clone(),
        _ => without_body(&full),
    };
    if let Some(code) = &code
        && !full.contains("NoSuchBucket")
        && (code.contains("SignatureDoesNotMatch")
            || code.contains("InvalidAccessKeyId")
            || code.contains("AccessDenied"))
    {
        line.push_str(" (check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)");
    } else if code.is_none() && status == Some("403") {
        line.push_str(" (access denied: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)");
    }
    if code.as_deref() == Some("NoSuchBucket") {
        line = "NoSuchBucket: the bucket does not exist".into();
    }
    line.replace(['\n', '\r'], " ")
}

/// The first line of a reply that carried no S3 error, its body left out: a server that is
/// not S3 (a web server, a proxy's error page) answers with HTML, which says nothing in a
/// terminal line. Says what kind of body it was and what to check.
fn without_body(full: &str) -> String {
    const MARK: &str = "status code: ";
    let Some(at) = full.find(MARK) else {
        return first_line(full).to_owned();
    };
    let after = &full[at + MARK.len()..];
    let Some((status, body)) = after.split_once(": ") else {
        return first_line(full).to_owned();
    };
    let body = body.trim();
    if body.is_empty() {
        return first_line(full).to_owned();
    }
    let kind = if body.starts_with('<') && body.to_ascii_lowercase().contains("<html") {
        "an HTML page"
    } else {
        "text"
    };
    format!(
        "{}{status}, with {kind} of {} bytes instead of an S3 error (is AWS_ENDPOINT_URL an \
         S3 server, and the bucket addressed as it expects: AWS_VIRTUAL_HOSTED_STYLE_REQUEST?)",
        &full[..at + MARK.len()],
        body.len()
    )
}

fn xml_field(text: &str, field: &str) -> Option<String> {
    let open = format!("<{field}>");
    let close = format!("</{field}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&close)? + start;
    Some(text[start..end].trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoints_password_is_never_shown() {
        assert_eq!(
            without_userinfo("http://user:hunter2@127.0.0.1:9/x?y=@z"),
            "http://127.0.0.1:9/x?y=@z"
        );
        assert_eq!(without_userinfo("https://h:1/p@q"), "https://h:1/p@q");
        assert_eq!(without_userinfo("h@x"), "h@x");
        assert_eq!(
            redact_userinfo(
                "Error performing GET http://u:p@127.0.0.1:8765/b?x=1 in 9ms, then https://a@h and http://h/@"
            ),
            "Error performing GET http://127.0.0.1:8765/b?x=1 in 9ms, then https://h and http://h/@"
        );
    }

    #[test]
    fn errors_are_one_line_with_the_s3_code_and_message() {
        let e = object_store::Error::Generic {
            store: "S3",
            source: "Error performing PUT http://h/b/k in 1ms - Server returned non-2XX status code: 403 Forbidden: <?xml version=\"1.0\"?>\n<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match</Message></Error>".into(),
        };
        let line = describe(&e);
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with("SignatureDoesNotMatch: The request signature"),
            "{line}"
        );
        assert!(line.contains("AWS_SECRET_ACCESS_KEY"), "{line}");
    }

    /// A server that is not S3 answers with a web page: the line names the status and
    /// what came back, never the page.
    #[test]
    fn an_html_reply_is_described_not_printed() {
        let e = object_store::Error::Generic {
            store: "S3",
            source: "Error performing GET http://h/b?list-type=2 in 2ms - Server returned non-2xx status code: 404 Not Found: <!DOCTYPE html><html><head><title>404</title></head>\n<body><h1>Not Found</h1></body></html>\n".into(),
        };
        let line = describe(&e);
        assert!(!line.contains('<') && !line.contains('\n'), "{line}");
        assert!(
            line.contains("status code: 404 Not Found, with an HTML page of 91 bytes"),
            "{line}"
        );
        assert!(line.contains("AWS_ENDPOINT_URL"), "{line}");
    }
}
