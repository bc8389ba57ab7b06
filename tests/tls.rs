//! `https` upstreams: the real binary against TLS backends on loopback whose certificates a test
//! CA signed (`tests/fixtures/tls`, made by its `make.sh`). The gateway trusts Mozilla's roots
//! and the system's store, or only the bundle `SSL_CERT_FILE` names; it negotiates HTTP/2 or
//! HTTP/1.1 by ALPN, and refuses a certificate it cannot verify.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::process::{Proc, TempConfig, check_command, free_addr, run_command, run_to_end};
use common::{client, error_body, eventually};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

/// A TLS backend presenting `cert` (`loopback` or `elsewhere`) and offering `alpn`; it answers
/// every request with the HTTP version, method, path and body it received, and counts the
/// handshakes that succeeded.
async fn backend(cert: &str, alpn: &[&[u8]]) -> (SocketAddr, Arc<AtomicUsize>) {
    let chain = CertificateDer::pem_file_iter(fixture(&format!("{cert}.pem")))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(fixture(&format!("{cert}.key"))).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counted = handshakes.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let counted = counted.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to serve.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::Relaxed);
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service_fn(echo))
                    .await;
            });
        }
    });
    (addr, handshakes)
}

async fn echo(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let said = format!(
        "{:?} {} {} {}",
        parts.version,
        parts.method,
        parts.uri.path(),
        String::from_utf8_lossy(&body)
    );
    Ok(Response::new(Full::new(Bytes::from(said))))
}

fn config(services: &[(&str, String)]) -> TempConfig {
    let mut toml = String::new();
    for (name, url) in services {
        toml += &format!("[services.{name}]\nurls = [\"{url}\"]\n");
    }
    for (name, _) in services {
        toml += &format!("[[routes]]\nprefix = \"/{name}\"\nservice = \"{name}\"\nauth = \"none\"\n");
    }
    TempConfig::new(&toml)
}

/// The binary on `config`, with `SSL_CERT_FILE` set to `cert_file` or unset.
async fn start(config: &TempConfig, cert_file: Option<&Path>) -> (Proc, SocketAddr) {
    let addr = free_addr();
    let mut cmd = run_command(config.path(), addr);
    // The gateway's default log level, which records why a backend was refused.
    cmd.env_remove("SSL_CERT_DIR").env_remove("RUST_LOG");
    match cert_file {
        Some(file) => cmd.env("SSL_CERT_FILE", file),
        None => cmd.env_remove("SSL_CERT_FILE"),
    };
    let mut proc = Proc::spawn(cmd);
    proc.wait_ready(addr).await;
    (proc, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_backends_a_trusted_ca_signed_are_reached_over_h2_and_http1() {
    let (h2, h2_handshakes) = backend("loopback", &[b"h2", b"http/1.1"]).await;
    let (http1, http1_handshakes) = backend("loopback", &[b"http/1.1"]).await;
    let config = config(&[
        ("h2", format!("https://127.0.0.1:{}", h2.port())),
        // By name: the certificate names `localhost` too.
        ("http1", format!("https://localhost:{}", http1.port())),
    ]);
    let (_proc, addr) = start(&config, Some(&fixture("ca.pem"))).await;
    let http = client();
    for round in 0..3 {
        // Several requests each: the second and third go on the connection the first opened.
        let answer = http
            .post(format!("http://{addr}/h2/items?x=1"))
            .body(format!("round {round}"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(
            answer.text().await.unwrap(),
            format!("HTTP/2.0 POST /h2/items round {round}")
        );
        let answer = http
            .get(format!("http://{addr}/http1/items"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.text().await.unwrap(), "HTTP/1.1 GET /http1/items ");
    }
    // One connection each: HTTP/2 multiplexes, HTTP/1.1 goes back to the idle list.
    assert_eq!(h2_handshakes.load(Ordering::Relaxed), 1);
    assert_eq!(http1_handshakes.load(Ordering::Relaxed), 1);
}

/// `Expect: 100-continue` in front of an HTTP/2 backend, whose client reads the request body in
/// a task of its own (on another thread of the gateway's runtime): the client gets its `100
/// Continue`, sends the body, and gets the backend's answer after it, nothing interleaved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_reaches_an_h2_backend() {
    let (h2, _) = backend("loopback", &[b"h2"]).await;
    let config = config(&[("h2", format!("https://127.0.0.1:{}", h2.port()))]);
    let (_proc, addr) = start(&config, Some(&fixture("ca.pem"))).await;
    for _ in 0..20 {
        let mut wire = tokio::net::TcpStream::connect(addr).await.unwrap();
        wire.write_all(
            b"POST /h2/up HTTP/1.1\r\nhost: gw\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"\r\n\r\n") {
            let n = wire.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the interim response");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"HTTP/1.1 100 Continue\r\n\r\n");
        wire.write_all(b"hello").await.unwrap();
        let mut answer = String::new();
        while !answer.ends_with("HTTP/2.0 POST /h2/up hello") {
            let n = wire.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the answer: {answer:?}");
            answer.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        }
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_certificate_the_gateway_cannot_verify_gets_502() {
    let (elsewhere, _) = backend("elsewhere", &[b"http/1.1"]).await;
    let (loopback, _) = backend("loopback", &[b"h2", b"http/1.1"]).await;
    // Signed by the trusted CA, but for another name than the URL's, by IP or by name; then a
    // certificate for the right name that only the test CA, not trusted here, signed.
    let cases = [
        (
            format!("https://127.0.0.1:{}", elsewhere.port()),
            Some(fixture("ca.pem")),
            "not valid for name",
        ),
        (
            format!("https://localhost:{}", elsewhere.port()),
            Some(fixture("ca.pem")),
            "not valid for name",
        ),
        (
            format!("https://127.0.0.1:{}", loopback.port()),
            None,
            "UnknownIssuer",
        ),
    ];
    for (url, cert_file, why) in cases {
        let config = config(&[("api", url.clone())]);
        let (proc, addr) = start(&config, cert_file.as_deref()).await;
        let answer = client().get(format!("http://{addr}/api")).send().await.unwrap();
        error_body(answer, 502, "UPSTREAM_UNAVAILABLE").await;
        eventually(&format!("the log says why {url} was refused"), async || {
            proc.stderr().contains(why)
        })
        .await;
    }
}

#[test]
fn an_unreadable_ssl_cert_file_is_a_config_error_for_https_services_only() {
    let check = |config: &TempConfig| {
        let mut cmd = check_command(config.path());
        cmd.env("SSL_CERT_FILE", "/nonexistent/ca.pem")
            .env_remove("SSL_CERT_DIR");
        let (status, _, stderr) = run_to_end(cmd);
        (status, stderr)
    };
    let https = config(&[("api", "https://127.0.0.1:9".to_owned())]);
    let (status, stderr) = check(&https);
    assert!(!status.success());
    let expected = format!(
        "{}:1:11: error: cannot create the HTTP client for service \"api\"",
        https.name()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains("SSL_CERT_FILE=/nonexistent/ca.pem"), "{stderr}");

    // A service reached over plain http never reads the trust store.
    let plain = config(&[("api", "http://127.0.0.1:9".to_owned())]);
    let (status, stderr) = check(&plain);
    assert!(status.success(), "{stderr}");
}
