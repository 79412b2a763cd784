//! The remote store's test bench: a real S3-compatible server (`s3s-fs`, installed by
//! `.ci/run`) on a free port with a temp directory, a small HTTP proxy that injects
//! faults, and network namespaces that act as separate hosts.
//!
//! Commands talk to s3s-fs straight (`S3::endpoint`), from loopback or from another host
//! through its gateway. s3s-fs 0.14.1 is weaker than S3 where two writers meet on one key:
//! it checks `If-Match` / `If-None-Match` before it writes, without a lock, so two
//! conditional PUTs that arrive together can both pass (8 processes × 40 appends to one
//! ref acknowledged 320 and kept 304), and a GET racing a PUT can return the old value
//! with the new ETag. prodigy does not rely on a server ordering two writers: each writer
//! of an event log appends to a ref of its own, and the DLQ and checkpoints have one
//! writer, the runner holding the job's lease — so these tests run at the server as it is.
//!
//! The proxy is for fault injection only (`S3::use_proxy`): it forwards one request per
//! connection (it adds `Connection: close`) and can answer the next N requests with 503
//! SlowDown (throttling), hold a PUT whose path contains a given text without answering (a
//! timeout mid-upload), and drop the `If-Match` / `If-None-Match` headers (a server
//! without conditional writes).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "prodigytest";
pub const SECRET_KEY: &str = "prodigytestsecret";
pub const BUCKET: &str = "prodigy-test";

/// The `s3s-fs` binary: on the PATH or in cargo's bin directory.
fn server_binary() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("s3s-fs"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        candidates.push(PathBuf::from(home).join("bin/s3s-fs"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/s3s-fs"));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .expect("the remote-store tests need s3s-fs: cargo install s3s-fs@0.14.1 --features binary (.ci/run does)")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the S3 server did not start on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `s3s-fs` with one bucket, and a fault-injecting proxy in front of it;
/// stopped on drop.
pub struct S3 {
    pub root: tempfile::TempDir,
    server: Child,
    /// The server's port (on every interface, so other hosts reach it too).
    pub port: u16,
    pub proxy: Proxy,
    /// Commands go through the proxy (for its faults).
    proxied: AtomicBool,
    /// False for a server started without credentials (requests go unsigned).
    signed: bool,
}

impl S3 {
    /// A server that checks signatures (the usual case).
    pub fn start() -> S3 {
        S3::launch(true)
    }

    /// A server without credentials, for unsigned requests (the proxy can then drop
    /// headers without breaking a signature).
    pub fn start_unsigned() -> S3 {
        S3::launch(false)
    }

    fn launch(signed: bool) -> S3 {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join(BUCKET)).unwrap();
        let port = free_port();
        let mut cmd = Command::new(server_binary());
        cmd.args(["--host", "0.0.0.0", "--port", &port.to_string()]);
        if signed {
            cmd.args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY]);
        }
        let server = cmd
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_for(server_addr);
        let proxy = Proxy::start("0.0.0.0:0".parse().unwrap(), server_addr);
        S3 {
            root,
            server,
            port,
            proxy,
            proxied: AtomicBool::new(false),
            signed,
        }
    }

    /// From now on commands go through the proxy, whose faults the test sets.
    pub fn use_proxy(&self) {
        self.proxied.store(true, Ordering::SeqCst);
    }

    /// The endpoint on loopback: the server's, or the proxy's after [`Self::use_proxy`].
    pub fn endpoint(&self) -> String {
        let port = match self.proxied.load(Ordering::SeqCst) {
            true => self.proxy.port,
            false => self.port,
        };
        format!("http://127.0.0.1:{port}")
    }

    /// The server's endpoint as another host reaches it (through its gateway).
    pub fn endpoint_from(&self, host: &Host) -> String {
        format!("http://{}:{}", host.gateway, self.port)
    }

    /// Sets the variables that make `cmd` use the store `s3://BUCKET/<prefix>` through
    /// `endpoint`.
    pub fn configure(&self, cmd: &mut std::process::Command, endpoint: &str, prefix: &str) {
        cmd.env("AWS_ENDPOINT_URL", endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("PRODIGY_STORE", format!("s3://{BUCKET}/{prefix}"))
            .env("PRODIGY_S3_TIMEOUT", "5s")
            .env("PRODIGY_S3_RETRY_TIMEOUT", "4s");
        if self.signed {
            cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
        } else {
            cmd.env("AWS_SKIP_SIGNATURE", "true");
        }
    }

    /// The file where the server keeps a key of the bucket.
    pub fn file(&self, prefix: &str, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(prefix).join(key)
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        self.proxy.stop();
    }
}

/// Faults the proxy injects.
#[derive(Default)]
pub struct Faults {
    /// Answer this many of the next requests with 503 SlowDown.
    pub throttle: AtomicU32,
    /// Hold (never answer) PUTs whose path contains this text.
    pub stall: Mutex<Option<String>>,
    /// Drop `If-Match` and `If-None-Match`.
    pub strip_conditions: AtomicBool,
    /// Requests seen.
    pub requests: AtomicUsize,
    /// Requests answered 503.
    pub throttled: AtomicUsize,
}

/// A one-request-per-connection HTTP proxy (see the module's comment).
pub struct Proxy {
    pub port: u16,
    pub faults: Arc<Faults>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(listen: SocketAddr, upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind(listen).unwrap();
        let port = listener.local_addr().unwrap().port();
        let faults = Arc::new(Faults::default());
        let stop = Arc::new(AtomicBool::new(false));
        {
            let faults = faults.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let faults = faults.clone();
                    std::thread::spawn(move || {
                        let _ = handle(client, upstream, &faults);
                    });
                }
            });
        }
        Proxy { port, faults, stop }
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn handle(mut client: TcpStream, upstream: SocketAddr, faults: &Faults) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let head_end = loop {
        if let Some(at) = find(&buf, b"\r\n\r\n") {
            break at + 4;
        }
        let n = client.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    faults.requests.fetch_add(1, Ordering::SeqCst);
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut body = buf[head_end..].to_vec();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let headers: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
    let header = |name: &str| {
        headers.iter().find_map(|h| {
            let (k, v) = h.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let is_put = request_line.starts_with("PUT ");

    let stall = faults.stall.lock().unwrap().clone();
    if is_put && stall.is_some_and(|s| request_line.contains(&s)) {
        // Take part of the body, then never answer: the client times out mid-upload.
        let deadline = Instant::now() + Duration::from_secs(30);
        client.set_read_timeout(Some(Duration::from_millis(200)))?;
        while Instant::now() < deadline {
            match client.read(&mut chunk) {
                Ok(0) => return Ok(()),
                _ => continue,
            }
        }
        return Ok(());
    }
    while body.len() < length {
        let n = client.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let throttled = faults
        .throttle
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if throttled {
        faults.throttled.fetch_add(1, Ordering::SeqCst);
        let text = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
        write!(
            client,
            "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
            text.len()
        )?;
        return Ok(());
    }
    let strip = faults.strip_conditions.load(Ordering::SeqCst);
    let mut out = format!("{request_line}\r\n");
    for h in &headers {
        let name = h
            .split(':')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if name == "connection" || (strip && (name == "if-match" || name == "if-none-match")) {
            continue;
        }
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(out.as_bytes())?;
    up.write_all(&body)?;
    std::io::copy(&mut up, &mut client)?;
    client.shutdown(std::net::Shutdown::Both)?;
    Ok(())
}

static NEXT_NET: AtomicU32 = AtomicU32::new(0);

/// Some hosts, and the shared hold on `NETNS_VS_REMOUNTS` they need (taken once per test:
/// a second shared hold could wait behind a waiting writer).
pub struct Hosts {
    pub list: Vec<Option<Host>>,
    _hold: std::sync::RwLockReadGuard<'static, ()>,
}

/// `n` hosts (each `None` where namespaces cannot be made).
pub fn hosts(n: usize) -> Hosts {
    let hold = crate::common::NETNS_VS_REMOUNTS
        .read()
        .unwrap_or_else(|p| p.into_inner());
    Hosts {
        list: (0..n).map(|_| Host::new()).collect(),
        _hold: hold,
    }
}

/// A network namespace with its own address, reaching the root namespace (where the proxy
/// listens on every address) over a veth pair: a separate "host". Removed on drop.
pub struct Host {
    pub name: String,
    /// The root namespace's end, which this host reaches the proxy at.
    pub gateway: String,
}

impl Host {
    /// A new host, or `None` where namespaces cannot be made (not root); under CI they
    /// must be possible. Made through [`hosts`].
    fn new() -> Option<Host> {
        if !crate::common::can_mount()
            || !Path::new("/usr/sbin/ip").exists() && !Path::new("/sbin/ip").exists()
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI needs iproute2 (ip) as root"
            );
            return None;
        }
        let n = NEXT_NET.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{n}", std::process::id() % 100_000);
        let name = format!("pgy{tag}");
        let outer = format!("pga{tag}");
        let inner = format!("pgb{tag}");
        let net = 16 + (std::process::id() as usize * 7 + n as usize) % 200;
        let sub = n as usize % 250 + 1;
        let gateway = format!("10.{net}.{sub}.1");
        let address = format!("10.{net}.{sub}.2");
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", &name]);
        let host = Host {
            name: name.clone(),
            gateway: gateway.clone(),
        };
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]);
        ip(&["link", "set", &inner, "netns", &name]);
        ip(&["addr", "add", &format!("{gateway}/24"), "dev", &outer]);
        ip(&["link", "set", &outer, "up"]);
        ip(&[
            "netns",
            "exec",
            &name,
            "ip",
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            &inner,
        ]);
        ip(&["netns", "exec", &name, "ip", "link", "set", &inner, "up"]);
        ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        Some(host)
    }

    /// `cmd` (program, arguments, environment, directory) run inside this host's
    /// namespace; set its streams on the result.
    pub fn wrap(&self, cmd: &std::process::Command) -> std::process::Command {
        let mut wrapped = std::process::Command::new("ip");
        wrapped
            .args(["netns", "exec", &self.name])
            .arg(cmd.get_program());
        wrapped.args(cmd.get_args());
        wrapped.env_clear();
        for (k, v) in cmd.get_envs() {
            if let Some(v) = v {
                wrapped.env(k, v);
            }
        }
        if let Some(dir) = cmd.get_current_dir() {
            wrapped.current_dir(dir);
        }
        wrapped
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, and with it the pair.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
