//! The command line as operators use it: `check` exit codes and messages, `dns` refusing bad
//! input at start, the ready file, and `geoip build` reproducing the shipped database.

mod common;

use std::process::{Command, Output};

use common::*;

fn meridian(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(args)
        .output()
        .expect("run meridian")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Every `.toml` below `folder`, recursively.
fn shipped_configs(folder: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            shipped_configs(&path, found);
        } else if path.extension().is_some_and(|e| e == "toml") {
            found.push(path);
        }
    }
}

#[test]
fn check_accepts_every_shipped_config() {
    // Every config shipped in zones/ and deploy/ must validate. Relay configs name TLS files
    // that operators create (`meridian certs self-signed`), so they are checked in a copy of
    // their folder with freshly made certificates.
    let mut configs = Vec::new();
    shipped_configs(&repo().join("zones"), &mut configs);
    shipped_configs(&repo().join("deploy"), &mut configs);
    let mut relay_configs = 0;
    for path in &configs {
        let text = std::fs::read_to_string(path).unwrap();
        let to_check = if text.lines().any(|l| l.trim() == "[relay]") {
            relay_configs += 1;
            let copy = tempfile::tempdir().unwrap().keep();
            let config = copy.join(path.file_name().unwrap());
            // An admin token the operator installs: a private stand-in beside the copy.
            let token = copy.join("relay-admin.token");
            std::fs::write(&token, "shipped-config-token\n").unwrap();
            std::fs::set_permissions(
                &token,
                <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
            )
            .unwrap();
            let text: String = text
                .lines()
                .map(|line| match line.split_once('=') {
                    Some((key, _)) if key.trim() == "admin_token_file" => {
                        format!("admin_token_file = {:?}\n", token.to_str().unwrap())
                    }
                    _ => format!("{line}\n"),
                })
                .collect();
            std::fs::write(&config, text).unwrap();
            let certs = copy.join("certs");
            let made = meridian(&[
                "certs",
                "self-signed",
                "--out",
                certs.to_str().unwrap(),
                "--name",
                "localhost",
            ]);
            assert!(made.status.success(), "{}", stderr(&made));
            config
        } else {
            path.clone()
        };
        let output = meridian(&["check", "--config", to_check.to_str().unwrap()]);
        assert!(
            output.status.success(),
            "{}: {}",
            path.display(),
            stderr(&output)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("ok"), "{stdout}");
    }
    assert!(
        configs.len() >= 2,
        "zones/meridian.toml and deploy/relay/relay.toml: {configs:?}"
    );
    assert!(relay_configs >= 1);
}

#[test]
fn check_refuses_a_relay_config_without_its_certificate() {
    let output = meridian(&[
        "check",
        "--config",
        repo().join("deploy/relay/relay.toml").to_str().unwrap(),
    ]);
    if repo().join("deploy/relay/certs/relay.pem").exists() {
        return; // a developer made the example's certificates; CI's clean clone has none
    }
    assert_eq!(output.status.code(), Some(64));
    assert!(stderr(&output).contains("relay.pem"), "{}", stderr(&output));
}

#[test]
fn check_lists_every_config_error_and_exits_64() {
    let scratch = Scratch::new();
    let text = scratch
        .read("zones/meridian.toml")
        .replace("ttl = 30", "ttl = 0")
        .replace("id = \"ap-south\"", "id = \"AP south\"");
    scratch.replace("zones/meridian.toml", &text);
    let output = meridian(&["check", "--config", scratch.config().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(64));
    let errors = stderr(&output);
    assert!(errors.contains("ttl"), "{errors}");
    assert!(errors.contains("AP south"), "{errors}");
    assert!(errors.contains("meridian.toml"), "names the file: {errors}");
}

#[test]
fn check_names_the_zone_file_and_line() {
    let scratch = Scratch::new();
    let zone = scratch.read("zones/example.test.zone");
    let line = zone.lines().count() + 1;
    scratch.replace(
        "zones/example.test.zone",
        &format!("{zone}broken 300 IN AAA 192.0.2.1\n"),
    );
    let output = meridian(&["check", "--config", scratch.config().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(64));
    let errors = stderr(&output);
    assert!(
        errors.contains(&format!("example.test.zone:{line}")),
        "file and line {line}: {errors}"
    );
}

#[test]
fn check_reports_a_broken_geoip_database() {
    let scratch = Scratch::new();
    scratch.replace("geoip/demo.mmdb", "garbage");
    let output = meridian(&["check", "--config", scratch.config().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(64));
    assert!(stderr(&output).contains("demo.mmdb"), "{}", stderr(&output));
}

#[test]
fn dns_refuses_to_start_on_a_bad_config() {
    let scratch = Scratch::new();
    scratch.replace("zones/meridian.toml", "[server]\nlisten = [\"nonsense\"]\n");
    let output = meridian(&[
        "dns",
        "--config",
        scratch.config().to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(output.status.code(), Some(64));
    assert!(stderr(&output).contains("nonsense"), "{}", stderr(&output));
}

#[test]
fn ready_file_names_bound_udp_tcp_and_metrics_addresses() {
    let server = Binary::dns(&[]);
    let udp = server.ready["udp"][0].as_str().unwrap();
    let tcp = server.ready["tcp"][0].as_str().unwrap();
    assert_eq!(udp, tcp, "one port for both transports");
    assert!(!udp.ends_with(":0"), "the bound port, not the requested 0");
    assert!(server.ready["metrics"].as_str().is_some());
    assert_eq!(
        server.ready["pid"].as_u64(),
        Some(u64::from(server.child.id()))
    );
}

#[test]
fn geoip_build_reproduces_the_shipped_database() {
    let out = tempfile::tempdir().unwrap();
    let built = out.path().join("demo.mmdb");
    let output = meridian(&[
        "geoip",
        "build",
        "--csv",
        repo().join("geoip/demo.csv").to_str().unwrap(),
        "--out",
        built.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        std::fs::read(&built).unwrap(),
        std::fs::read(repo().join("geoip/demo.mmdb")).unwrap(),
        "geoip/demo.mmdb is exactly what the documented command builds"
    );
}

#[test]
fn certs_deployment_writes_a_ca_and_member_certificates_once() {
    use std::os::unix::fs::PermissionsExt;
    let out = tempfile::tempdir().unwrap();
    let folder = out.path().join("pki");
    let args = [
        "certs",
        "deployment",
        "--out",
        folder.to_str().unwrap(),
        "--region",
        "eu-west=api.example.test,127.0.1.1",
        "--node",
        "pop-a=127.0.0.1",
    ];
    let made = meridian(&args);
    assert!(made.status.success(), "{}", stderr(&made));
    for file in ["ca.pem", "relay-eu-west.pem", "dns-pop-a.pem"] {
        let text = std::fs::read_to_string(folder.join(file)).unwrap();
        assert!(text.contains("BEGIN CERTIFICATE"), "{file}");
    }
    for key in ["ca-key.pem", "relay-eu-west-key.pem", "dns-pop-a-key.pem"] {
        let mode = std::fs::metadata(folder.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{key} is readable by others: {mode:o}");
    }
    // The relay certificate is a usable TLS server pair: `check` loads it for a relay config.
    let relay = std::fs::read_to_string(repo().join("deploy/relay/relay.toml")).unwrap();
    std::fs::create_dir_all(out.path().join("certs")).unwrap();
    std::fs::copy(
        folder.join("relay-eu-west.pem"),
        out.path().join("certs/relay.pem"),
    )
    .unwrap();
    std::fs::copy(
        folder.join("relay-eu-west-key.pem"),
        out.path().join("certs/relay-key.pem"),
    )
    .unwrap();
    std::fs::write(out.path().join("relay.toml"), relay).unwrap();
    let checked = meridian(&[
        "check",
        "--config",
        out.path().join("relay.toml").to_str().unwrap(),
    ]);
    assert!(checked.status.success(), "{}", stderr(&checked));

    let again = meridian(&args);
    assert_eq!(
        again.status.code(),
        Some(64),
        "never overwrites a deployment's keys"
    );
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
}
