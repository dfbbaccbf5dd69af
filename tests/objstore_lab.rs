//! The S3 object store against the lab's RADOS Gateway (`lab/lab.sh rgw up`).
//!
//! The store contract (`objstore::conformance`) over HTTP and over HTTPS with the lab's CA;
//! what the store writes is read back by `curl --aws-sigv4`, an independent S3 client, and
//! what curl writes is read by the store. Then the failures an operator meets: a wrong secret
//! key, an unknown CA, an endpoint nobody listens on; each must give an error that names the
//! endpoint and never the secret, within the configured bound.
//!
//! Skipped unless `VRB_LAB=1` and `LAB_S3_ENDPOINT` (from `eval "$(lab/lab.sh env)"`).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use virt_rbd_backup::objstore::conformance::check_store;
use virt_rbd_backup::objstore::{parse_credentials, ObjectStore, S3Options, S3Store, StoreError};

struct Lab {
    endpoint: String,
    tls_endpoint: String,
    ca: PathBuf,
    bucket: String,
    region: String,
    credentials: PathBuf,
}

fn lab() -> Option<Lab> {
    if std::env::var("VRB_LAB").as_deref() != Ok("1") {
        eprintln!("skipped: set VRB_LAB=1 with the lab's gateway up (lab/lab.sh rgw up; eval \"$(lab/lab.sh env)\")");
        return None;
    }
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("VRB_LAB=1 but {name} is not set: eval \"$(lab/lab.sh env)\"")
        })
    };
    Some(Lab {
        endpoint: var("LAB_S3_ENDPOINT"),
        tls_endpoint: var("LAB_S3_TLS_ENDPOINT"),
        ca: var("LAB_S3_CA").into(),
        bucket: var("LAB_S3_BUCKET"),
        region: var("LAB_S3_REGION"),
        credentials: var("LAB_S3_CREDENTIALS").into(),
    })
}

fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("objstore-lab/{name}-{}-{nanos}", std::process::id())
}

fn options(lab: &Lab, endpoint: &str) -> S3Options {
    S3Options {
        endpoint: Some(endpoint.to_string()),
        region: Some(lab.region.clone()),
        credentials_file: Some(lab.credentials.clone()),
        ca_file: Some(lab.ca.clone()),
        ..S3Options::default()
    }
}

/// curl signing with the lab's keys, passed on stdin (never on a command line).
fn curl(lab: &Lab, method: &str, key: &str, body: Option<&[u8]>) -> (u16, Vec<u8>) {
    let text = std::fs::read_to_string(&lab.credentials).unwrap();
    let keys = parse_credentials(&text, "default").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let body_file = dir.path().join("body");
    let out_file = dir.path().join("out");
    let mut config = format!(
        "user = \"{}:{}\"\nrequest = \"{method}\"\nurl = \"{}/{}/{key}\"\noutput = \"{}\"\nwrite-out = \"%{{http_code}}\"\n",
        keys.access_key_id.expose(),
        keys.secret_access_key.expose(),
        lab.endpoint,
        lab.bucket,
        out_file.display()
    );
    if let Some(body) = body {
        std::fs::write(&body_file, body).unwrap();
        config.push_str(&format!("upload-file = \"{}\"\n", body_file.display()));
    }
    let mut child = Command::new("curl")
        .args(["-sS", "--aws-sigv4", &format!("aws:amz:{}:s3", lab.region)])
        .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", "-K", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "curl {method} {key} failed");
    let code: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (code, std::fs::read(&out_file).unwrap_or_default())
}

#[test]
fn s3_keeps_the_store_contract_over_http_and_https() {
    let Some(lab) = lab() else { return };
    for endpoint in [&lab.endpoint, &lab.tls_endpoint] {
        let prefix = unique("contract");
        let store = S3Store::open(&lab.bucket, &prefix, &options(&lab, endpoint)).unwrap();
        check_store(&store, "conformance");
    }
}

#[test]
fn what_the_store_writes_is_what_another_client_reads() {
    let Some(lab) = lab() else { return };
    let prefix = unique("interop");
    let store = S3Store::open(&lab.bucket, &prefix, &options(&lab, &lab.endpoint)).unwrap();
    let data: Vec<u8> = (0..1_000_003u32).map(|i| (i * 7 % 251) as u8).collect();
    store.put("ours", data.clone()).unwrap();
    let (code, body) = curl(&lab, "GET", &format!("{prefix}/ours"), None);
    assert_eq!(code, 200);
    assert!(
        body == data,
        "curl read different bytes than the store wrote"
    );
    let (code, _) = curl(&lab, "PUT", &format!("{prefix}/theirs"), Some(b"from curl"));
    assert_eq!(code, 200);
    assert_eq!(store.get("theirs").unwrap(), b"from curl");
    for key in ["ours", "theirs"] {
        store.delete(key).unwrap();
        let (code, _) = curl(&lab, "GET", &format!("{prefix}/{key}"), None);
        assert_eq!(code, 404, "{key} still readable after delete");
    }
}

#[test]
fn a_wrong_secret_key_is_refused_without_showing_it() {
    let Some(lab) = lab() else { return };
    let text = std::fs::read_to_string(&lab.credentials).unwrap();
    let keys = parse_credentials(&text, "default").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(
        &wrong,
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = NotTheSecretKey0123456789\n",
            keys.access_key_id.expose()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut opts = options(&lab, &lab.endpoint);
    opts.credentials_file = Some(wrong);
    let store = S3Store::open(&lab.bucket, &unique("denied"), &opts).unwrap();
    let err = store.put("x", b"x".to_vec()).unwrap_err();
    assert!(matches!(err, StoreError::Denied { .. }), "{err:?}");
    let text = err.to_string();
    eprintln!("wrong key: {text}");
    assert!(
        text.contains(&lab.endpoint) && text.contains("secret key"),
        "{text}"
    );
    assert!(!text.contains("NotTheSecretKey"), "{text}");
}

#[test]
fn an_unknown_ca_is_an_error_not_a_silent_downgrade() {
    let Some(lab) = lab() else { return };
    let mut opts = options(&lab, &lab.tls_endpoint);
    opts.ca_file = None;
    opts.retry_timeout = Duration::from_secs(5);
    let store = S3Store::open(&lab.bucket, &unique("noca"), &opts).unwrap();
    let err = store.head("x").unwrap_err().to_string();
    eprintln!("unknown CA: {err}");
    assert!(err.contains(&lab.tls_endpoint), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

#[test]
fn an_endpoint_nobody_listens_on_fails_within_the_bound() {
    let Some(lab) = lab() else { return };
    let mut opts = options(&lab, "http://127.0.0.1:9");
    opts.retry_timeout = Duration::from_secs(3);
    opts.request_timeout = Duration::from_secs(2);
    let store = S3Store::open(&lab.bucket, &unique("down"), &opts).unwrap();
    let started = Instant::now();
    let err = store.put("x", b"x".to_vec()).unwrap_err();
    let took = started.elapsed();
    let text = err.to_string();
    eprintln!("endpoint down, after {took:?}: {text}");
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    assert!(
        text.contains("127.0.0.1:9") && text.contains("put x"),
        "{text}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
}
