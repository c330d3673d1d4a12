//! The deployment artifacts in `deploy/` against the code they deploy: the container file
//! builds from files that exist, the Kubernetes manifests carry configs that `meridian check`
//! accepts and wire probes, ports and grace periods the way the binary behaves, the systemd
//! units keep their sandboxing, and the multi-region example is consistent across PoPs and
//! regions. (Every `.toml` in `deploy/` is checked as shipped by `tests/cli.rs`.)
//!
//! No YAML parser is a dependency: the manifests are read as text, with the few structural
//! rules they follow (documents split by `---`, two-space indentation, `|` block scalars).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo().join(relative))
        .unwrap_or_else(|error| panic!("{relative}: {error}"))
}

fn meridian(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(args)
        .output()
        .expect("run meridian")
}

fn check(config: &Path) {
    let output = meridian(&["check", "--config", config.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}: {}",
        config.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn toml_table(text: &str) -> toml::Table {
    text.parse::<toml::Table>().expect("valid TOML")
}

fn str_at<'a>(table: &'a toml::Table, path: &[&str]) -> &'a str {
    let (last, parents) = path.split_last().unwrap();
    let mut current = table;
    for key in parents {
        current = current[*key].as_table().unwrap();
    }
    current[*last].as_str().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Container file
// ---------------------------------------------------------------------------------------------

/// The Containerfile's instructions, continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<String> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.starts_with('#') || trimmed.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                joined.push(std::mem::take(&mut current));
            }
        }
    }
    joined
}

/// The sources of every `COPY` from the build context (not `--from=` a stage).
fn context_sources(instructions: &[String]) -> Vec<String> {
    instructions
        .iter()
        .filter_map(|i| i.strip_prefix("COPY "))
        .filter(|args| !args.starts_with("--from"))
        .flat_map(|args| {
            let words: Vec<&str> = args.split_whitespace().collect();
            let (_destination, sources) = words.split_last().unwrap();
            sources.iter().map(|s| s.to_string()).collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn containerfile_copies_only_files_that_exist_and_are_not_ignored() {
    let steps = instructions(&read("deploy/container/Containerfile"));
    let sources = context_sources(&steps);
    assert!(sources.len() >= 5, "{sources:?}");
    let ignored: Vec<String> = read("deploy/container/Containerfile.dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_string())
        .collect();
    assert!(ignored.contains(&"target".to_string()), "{ignored:?}");
    for source in &sources {
        assert!(
            repo().join(source).exists(),
            "COPY {source}: no such file in the repository"
        );
        for pattern in &ignored {
            let hidden = match pattern.strip_prefix("**/") {
                Some(name) => source.split('/').any(|part| part == name),
                None => {
                    source.trim_end_matches('/') == pattern
                        || source.starts_with(&format!("{pattern}/"))
                }
            };
            assert!(!hidden, "COPY {source} is excluded by `{pattern}`");
        }
    }
}

#[test]
fn containerfile_builds_locked_and_runs_meridian_as_non_root() {
    let steps = instructions(&read("deploy/container/Containerfile"));
    let froms: Vec<&String> = steps.iter().filter(|s| s.starts_with("FROM ")).collect();
    assert_eq!(
        froms.len(),
        2,
        "a build stage and a runtime stage: {froms:?}"
    );
    assert!(froms[0].contains("rust:1-bookworm") && froms[0].ends_with(" AS build"));
    assert!(froms[1].contains("debian:bookworm-slim"));
    let runtime_start = steps.iter().position(|s| s == froms[1]).unwrap();
    let (build, runtime) = steps.split_at(runtime_start);

    assert!(
        build
            .iter()
            .any(|s| s.starts_with("RUN ") && s.contains("cargo build --release --locked")),
        "{build:?}"
    );
    // What the runtime stage takes from the build stage is what the build stage made.
    let taken: Vec<&str> = runtime
        .iter()
        .filter_map(|s| s.strip_prefix("COPY --from=build "))
        .map(|args| args.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(taken.len(), 1, "{taken:?}");
    assert!(
        build
            .iter()
            .any(|s| s.starts_with("RUN ") && s.contains(taken[0])),
        "the build stage never writes {}",
        taken[0]
    );
    assert!(runtime.iter().any(|s| s.contains("ca-certificates")));

    let user = runtime
        .iter()
        .filter_map(|s| s.strip_prefix("USER "))
        .next_back()
        .expect("a USER in the runtime stage");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("numeric uid");
    assert_ne!(uid, 0);
    assert!(
        runtime
            .iter()
            .any(|s| s == "ENTRYPOINT [\"/usr/local/bin/meridian\"]"),
        "{runtime:?}"
    );
    let exposed: BTreeSet<&str> = runtime
        .iter()
        .filter_map(|s| s.strip_prefix("EXPOSE "))
        .flat_map(str::split_whitespace)
        .collect();
    assert_eq!(
        exposed,
        BTreeSet::from(["53/udp", "53/tcp", "443/tcp", "443/udp"])
    );
}

#[test]
fn the_build_stage_copies_enough_for_cargo_to_read_the_manifest() {
    // Cargo.toml names targets outside src/ (a bench, an example); a build context missing
    // them fails at "failed to parse manifest" before compiling anything. Asking for a bin
    // that does not exist stops Cargo right after it read the manifest and the lock file.
    let steps = instructions(&read("deploy/container/Containerfile"));
    let runtime_start = steps.iter().rposition(|s| s.starts_with("FROM ")).unwrap();
    let context = tempfile::tempdir().unwrap();
    for source in context_sources(&steps[..runtime_start]) {
        copy_recursively(&repo().join(&source), &context.path().join(&source));
    }
    let output = Command::new(env!("CARGO"))
        .current_dir(context.path())
        .args(["build", "--offline", "--locked", "--release"])
        .args(["--bin", "no-such-target", "--target-dir"])
        .arg(context.path().join("target"))
        .output()
        .expect("run cargo");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no bin target named `no-such-target`"),
        "{stderr}"
    );
}

fn copy_recursively(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_recursively(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Kubernetes manifests
// ---------------------------------------------------------------------------------------------

/// The YAML documents of a manifest, without the comment-only preamble.
fn documents(text: &str) -> Vec<String> {
    text.split("\n---\n")
        .map(|doc| format!("{}\n", doc.trim_end()))
        .filter(|doc| {
            doc.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

fn document<'a>(documents: &'a [String], kind: &str, name: &str) -> &'a str {
    documents
        .iter()
        .find(|doc| {
            doc.lines().any(|l| l == format!("kind: {kind}"))
                && doc.lines().any(|l| l == format!("  name: {name}"))
        })
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The content of the `key: |` block scalar in `document` (clip chomping: one final newline).
fn block_scalar(document: &str, key: &str) -> String {
    let lines: Vec<&str> = document.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_start() == format!("{key}: |"))
        .unwrap_or_else(|| panic!("no block scalar `{key}: |`"));
    let key_indent = indent(lines[start]);
    let body: Vec<&str> = lines[start + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || indent(l) > key_indent)
        .copied()
        .collect();
    let block_indent = body
        .iter()
        .find(|l| !l.trim().is_empty())
        .map(|l| indent(l))
        .expect("a non-empty block");
    let mut text: String = body
        .iter()
        .map(|l| format!("{}\n", l.get(block_indent..).unwrap_or("")))
        .collect();
    while text.ends_with("\n\n") {
        text.pop();
    }
    text
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// The scalar after `key: ` on the first line that has it.
fn scalar<'a>(document: &'a str, key: &str) -> &'a str {
    document
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no `{key}:`"))
        .trim_matches('"')
}

/// The list items of the sequence under `key:` (`- item` lines right below it).
fn sequence(document: &str, key: &str) -> Vec<String> {
    let lines: Vec<&str> = document.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_start() == format!("{key}:"))
        .unwrap_or_else(|| panic!("no `{key}:`"));
    lines[start + 1..]
        .iter()
        .map_while(|l| l.trim_start().strip_prefix("- "))
        .map(str::to_string)
        .collect()
}

fn mount_paths(document: &str) -> Vec<String> {
    document
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("mountPath: "))
        .map(str::to_string)
        .collect()
}

fn mounted(document: &str, file: &str) -> bool {
    mount_paths(document)
        .iter()
        .any(|dir| Path::new(file).parent() == Some(Path::new(dir)))
}

const MANIFESTS: [&str; 3] = ["namespace.yaml", "dns.yaml", "relay.yaml"];

#[test]
fn kubernetes_manifests_are_well_formed_and_all_listed() {
    let kustomization = read("deploy/kubernetes/kustomization.yaml");
    let resources: BTreeSet<String> = sequence(&kustomization, "resources").into_iter().collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(repo().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    assert_eq!(
        resources, on_disk,
        "kustomization.yaml lists every manifest"
    );
    assert_eq!(on_disk, MANIFESTS.iter().map(|m| m.to_string()).collect());

    for manifest in MANIFESTS {
        let text = read(&format!("deploy/kubernetes/{manifest}"));
        assert!(
            !text.contains('\t'),
            "{manifest}: YAML forbids tab indentation"
        );
        for doc in documents(&text) {
            for key in ["apiVersion", "kind", "metadata"] {
                assert!(
                    doc.lines().any(|l| l.starts_with(&format!("{key}:"))),
                    "{manifest}: a document without {key}:\n{doc}"
                );
            }
            assert!(
                doc.lines().any(|l| l == "  namespace: meridian")
                    || doc.contains("kind: Namespace"),
                "{manifest}: every object lives in the meridian namespace:\n{doc}"
            );
        }
    }
}

#[test]
fn dns_manifest_config_and_zone_pass_check() {
    let docs = documents(&read("deploy/kubernetes/dns.yaml"));
    let config_map = document(&docs, "ConfigMap", "meridian-dns-config");
    let deployment = document(&docs, "Deployment", "meridian-dns");
    let zone = block_scalar(config_map, "example.com.zone");
    assert_eq!(
        zone,
        read("deploy/example/example.com.zone"),
        "the zone in dns.yaml is deploy/example/example.com.zone"
    );
    let operator_state = block_scalar(
        document(&docs, "ConfigMap", "meridian-operator-state"),
        "operator-state.json",
    );
    let mut config = toml_table(&block_scalar(config_map, "meridian.toml"));

    // The config file, its zone file and the operator state are where the pod mounts them.
    let args = sequence(deployment, "args");
    let config_path = &args[args.iter().position(|a| a == "--config").unwrap() + 1];
    assert!(mounted(deployment, config_path), "{config_path}");
    let state_path = str_at(&config, &["operator_state"]).to_string();
    let geoip_path = str_at(&config, &["geoip", "database"]).to_string();
    for path in [&state_path, &geoip_path] {
        assert!(path.starts_with('/') && mounted(deployment, path), "{path}");
    }

    // Check it with local stand-ins for what only exists in the pod.
    let scratch = tempfile::tempdir().unwrap();
    std::fs::write(scratch.path().join("example.com.zone"), &zone).unwrap();
    let local_state = scratch.path().join("operator-state.json");
    std::fs::write(&local_state, operator_state).unwrap();
    let demo = repo().join("geoip/demo.mmdb");
    config.insert(
        "operator_state".into(),
        local_state.to_str().unwrap().into(),
    );
    config["geoip"].as_table_mut().unwrap()["database"] = demo.to_str().unwrap().into();
    let local_config = scratch.path().join("meridian.toml");
    std::fs::write(&local_config, toml::to_string(&config).unwrap()).unwrap();
    check(&local_config);
}

#[test]
fn dns_manifest_serves_udp_and_tcp_53_and_is_ready_by_the_ready_file() {
    let docs = documents(&read("deploy/kubernetes/dns.yaml"));
    let service = document(&docs, "Service", "meridian-dns");
    for protocol in ["UDP", "TCP"] {
        assert!(
            service.contains(&format!(
                "      port: 53\n      targetPort: dns-{}\n      protocol: {protocol}\n",
                protocol.to_lowercase()
            )),
            "Service port 53/{protocol}:\n{service}"
        );
    }
    let deployment = document(&docs, "Deployment", "meridian-dns");
    let args = sequence(deployment, "args");
    assert_eq!(args[0], "dns");
    let ready = &args[args.iter().position(|a| a == "--ready-file").unwrap() + 1];
    assert!(
        mounted(deployment, ready),
        "{ready} is on a writable volume"
    );
    let probe = deployment
        .split("readinessProbe:")
        .nth(1)
        .expect("a readiness probe");
    let command = probe.lines().nth(2).unwrap();
    assert!(
        command.contains("\"/usr/bin/test\", \"-s\"") && command.contains(&format!("\"{ready}\"")),
        "readiness from the ready file: {command}"
    );
    assert_locked_down(deployment, 53);
}

#[test]
fn relay_manifest_config_passes_check_with_the_mounted_certificate() {
    let docs = documents(&read("deploy/kubernetes/relay.yaml"));
    let deployment = document(&docs, "Deployment", "meridian-relay");
    let mut config = toml_table(&block_scalar(
        document(&docs, "ConfigMap", "meridian-relay-config"),
        "relay.toml",
    ));
    let args = sequence(deployment, "args");
    assert_eq!(args[0], "relay");
    let config_path = &args[args.iter().position(|a| a == "--config").unwrap() + 1];
    assert!(mounted(deployment, config_path), "{config_path}");

    // The certificate and key are the kubernetes.io/tls Secret's files, where it is mounted.
    let cert = str_at(&config, &["relay", "tls", "cert"]).to_string();
    let key = str_at(&config, &["relay", "tls", "key"]).to_string();
    assert!(cert.ends_with("/tls.crt") && key.ends_with("/tls.key"));
    assert!(mounted(deployment, &cert) && mounted(deployment, &key));
    assert!(deployment.contains("secretName: meridian-relay-tls"));

    let scratch = tempfile::tempdir().unwrap();
    let certs = scratch.path().join("certs");
    let made = meridian(&[
        "certs",
        "self-signed",
        "--out",
        certs.to_str().unwrap(),
        "--name",
        "localhost",
    ]);
    assert!(made.status.success());
    let tls = config["relay"]["tls"].as_table_mut().unwrap();
    tls["cert"] = certs.join("relay.pem").to_str().unwrap().into();
    tls["key"] = certs.join("relay-key.pem").to_str().unwrap().into();

    // The admin token: copied 0400 by the init container from its Secret into the volume the
    // relay reads it from (the kubelet's fsGroup makes Secret files group-readable, which the
    // relay refuses).
    let token = str_at(&config, &["relay", "admin_token_file"]).to_string();
    let init = deployment
        .split("initContainers:")
        .nth(1)
        .and_then(|rest| rest.split("\n      containers:").next())
        .expect("an init container");
    assert!(
        init.contains(&format!(
            "\"-m\", \"0400\", \"/etc/meridian/admin-token/token\", \"{token}\""
        )),
        "the init container installs the token 0400 at {token}:\n{init}"
    );
    assert!(mounted(deployment, &token), "{token}");
    assert!(deployment.contains("secretName: meridian-relay-admin-token"));
    let local_token = scratch.path().join("relay-admin.token");
    std::fs::write(&local_token, "k8s-admin-token\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&local_token, std::fs::Permissions::from_mode(0o400)).unwrap();
    }
    config["relay"].as_table_mut().unwrap()["admin_token_file"] =
        local_token.to_str().unwrap().into();
    let local_config = scratch.path().join("relay.toml");
    std::fs::write(&local_config, toml::to_string(&config).unwrap()).unwrap();
    check(&local_config);
}

#[test]
fn relay_manifest_serves_tcp_and_udp_443_and_drains_within_the_grace_period() {
    let docs = documents(&read("deploy/kubernetes/relay.yaml"));
    let config = toml_table(&block_scalar(
        document(&docs, "ConfigMap", "meridian-relay-config"),
        "relay.toml",
    ));
    // Alt-Svc advertises the relay's own port: the Service must expose that same port.
    let listen = str_at(&config, &["relay", "listen"]);
    assert!(listen.ends_with(":443"), "{listen}");
    let service = document(&docs, "Service", "meridian-relay");
    for (name, protocol) in [("https", "TCP"), ("h3", "UDP")] {
        assert!(
            service.contains(&format!(
                "    - name: {name}\n      port: 443\n      targetPort: {name}\n      protocol: {protocol}\n"
            )),
            "Service 443/{protocol}:\n{service}"
        );
    }

    let deployment = document(&docs, "Deployment", "meridian-relay");
    let readiness = deployment.split("readinessProbe:").nth(1).unwrap();
    assert!(
        readiness.contains("path: /health") && readiness.contains("scheme: HTTPS"),
        "ready while not draining: the HTTPS listener's /health"
    );
    let liveness = deployment.split("livenessProbe:").nth(1).unwrap();
    assert!(
        !liveness.lines().take(4).any(|l| l.contains("/health")),
        "a draining relay answers 503 on /health and must not be killed for it"
    );

    // preStop pause + the longest drain (timeouts.total_ms) must fit in the grace period.
    let total_ms = config
        .get("timeouts")
        .and_then(|t| t.get("total_ms"))
        .and_then(toml::Value::as_integer)
        .unwrap_or(600_000);
    let pre_stop: i64 = deployment
        .split("preStop:")
        .nth(1)
        .and_then(|rest| rest.lines().find(|l| l.contains("command:")))
        .and_then(|l| l.split('"').nth(3))
        .expect("preStop sleep")
        .parse()
        .unwrap();
    let grace: i64 = scalar(deployment, "terminationGracePeriodSeconds")
        .parse()
        .unwrap();
    assert!(
        grace > pre_stop + total_ms / 1000,
        "terminationGracePeriodSeconds {grace} <= preStop {pre_stop} + drain {}",
        total_ms / 1000
    );
    assert_locked_down(deployment, 443);
}

/// Non-root, read-only root, no privilege escalation, no capabilities, and the namespaced
/// sysctl that lets it bind `port` anyway.
fn assert_locked_down(deployment: &str, port: u16) {
    for line in [
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        "drop: [\"ALL\"]",
        "type: RuntimeDefault",
        "automountServiceAccountToken: false",
    ] {
        assert!(deployment.contains(line), "missing `{line}`");
    }
    let containers = deployment.matches("image: ").count();
    assert_eq!(
        deployment
            .matches("allowPrivilegeEscalation: false")
            .count(),
        containers,
        "every container"
    );
    assert!(!deployment.contains("privileged: true"));
    assert!(!deployment.contains("hostNetwork: true"));
    let sysctl = deployment
        .split("- name: net.ipv4.ip_unprivileged_port_start")
        .nth(1)
        .expect("the unprivileged-port sysctl");
    let start: u16 = scalar(sysctl, "value").parse().unwrap();
    assert!(start <= port, "port {port} is below {start}");
}

// ---------------------------------------------------------------------------------------------
// systemd units
// ---------------------------------------------------------------------------------------------

/// Directives the units may use: a misspelt one is only a warning to systemd, and the
/// sandboxing it was meant to add silently missing.
const KNOWN_DIRECTIVES: [&str; 47] = [
    "Description",
    "Documentation",
    "After",
    "Wants",
    "Type",
    "ExecStartPre",
    "ExecStart",
    "ExecReload",
    "Restart",
    "ExecStopPost",
    "RestartSec",
    "KillSignal",
    "KillMode",
    "TimeoutStopSec",
    "DynamicUser",
    "SupplementaryGroups",
    "RuntimeDirectory",
    "StateDirectory",
    "AmbientCapabilities",
    "CapabilityBoundingSet",
    "NoNewPrivileges",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectClock",
    "ProtectHostname",
    "ProtectProc",
    "RestrictAddressFamilies",
    "RestrictNamespaces",
    "RestrictRealtime",
    "RestrictSUIDSGID",
    "LockPersonality",
    "MemoryDenyWriteExecute",
    "SystemCallArchitectures",
    "SystemCallFilter",
    "LimitNOFILE",
    "WantedBy",
    "User",
    "Group",
    "UMask",
    "PrivateMounts",
    "LoadCredential",
];

fn directives(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('[') && !l.trim().is_empty())
        .map(|l| {
            let (key, value) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not a directive: {l}"));
            (key.to_string(), value.to_string())
        })
        .collect()
}

#[test]
fn systemd_units_are_sandboxed_and_check_before_start() {
    for (unit, command) in [
        ("deploy/systemd/meridian-dns.service", "dns"),
        ("deploy/systemd/meridian-relay.service", "relay"),
    ] {
        let directives = directives(&read(unit));
        for (key, _) in &directives {
            assert!(
                KNOWN_DIRECTIVES.contains(&key.as_str()),
                "{unit}: unknown directive {key}"
            );
        }
        let has = |key: &str, value: &str| directives.iter().any(|(k, v)| k == key && v == value);
        for (key, value) in [
            ("DynamicUser", "yes"),
            ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
            ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("PrivateDevices", "yes"),
            ("RestrictNamespaces", "yes"),
            ("MemoryDenyWriteExecute", "yes"),
            ("SystemCallFilter", "@system-service"),
            ("SystemCallFilter", "~@privileged @resources"),
            ("SystemCallArchitectures", "native"),
            ("ProtectKernelTunables", "yes"),
            ("ProtectKernelModules", "yes"),
            ("ProtectKernelLogs", "yes"),
            ("ProtectControlGroups", "yes"),
            ("ProtectClock", "yes"),
            ("ProtectHostname", "yes"),
            ("ProtectProc", "invisible"),
            ("PrivateMounts", "yes"),
            ("LockPersonality", "yes"),
            ("RestrictRealtime", "yes"),
            ("RestrictSUIDSGID", "yes"),
            ("UMask", "0027"),
            ("LimitNOFILE", "65536"),
            ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ] {
            assert!(has(key, value), "{unit}: {key}={value}");
        }
        let families = &directives
            .iter()
            .find(|(k, _)| k == "RestrictAddressFamilies")
            .unwrap()
            .1;
        assert!(
            families.contains("AF_INET ") && families.contains("AF_INET6"),
            "{families}"
        );
        // Nothing beyond IP, local sockets (journal, BIRD's control socket) and netlink
        // (getaddrinfo); no raw packets, no AF_PACKET.
        for family in families.split_whitespace() {
            assert!(
                ["AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"].contains(&family),
                "{unit}: RestrictAddressFamilies allows {family}"
            );
        }
        // One capability, nothing that writes outside the unit's own directories, never root.
        for (key, value) in &directives {
            assert!(
                !(key == "User" && value == "root") && key != "ReadWritePaths",
                "{unit}: {key}={value}"
            );
            if key == "AmbientCapabilities" || key == "CapabilityBoundingSet" {
                assert_eq!(value, "CAP_NET_BIND_SERVICE", "{unit}: {key}");
            }
        }

        // `meridian check` runs on the very file the service then serves.
        let config_of = |key: &str| {
            let value = &directives.iter().find(|(k, _)| k == key).unwrap().1;
            let words: Vec<&str> = value.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "--config").unwrap();
            (words[1], words[at + 1].to_string())
        };
        let (pre_command, checked) = config_of("ExecStartPre");
        let (start_command, served) = config_of("ExecStart");
        assert_eq!((pre_command, start_command), ("check", command), "{unit}");
        assert_eq!(checked, served, "{unit}");
    }
}

#[test]
fn relay_unit_waits_for_the_longest_drain() {
    let directives = directives(&read("deploy/systemd/meridian-relay.service"));
    let value = |key: &str| {
        directives
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {key}"))
    };
    assert_eq!(value("KillSignal"), "SIGTERM");
    let stop_s: i64 = value("TimeoutStopSec")
        .trim_end_matches('s')
        .parse()
        .unwrap();
    let mut longest_drain_s = 600; // timeouts.total_ms's default
    for relay in example_relays() {
        let config = toml_table(&std::fs::read_to_string(&relay).unwrap());
        if let Some(total) = config.get("timeouts").and_then(|t| t.get("total_ms")) {
            longest_drain_s = longest_drain_s.max(total.as_integer().unwrap() / 1000);
        }
    }
    assert!(
        stop_s > longest_drain_s,
        "TimeoutStopSec={stop_s}s would SIGKILL a drain of up to {longest_drain_s}s"
    );
}

// ---------------------------------------------------------------------------------------------
// The multi-region example
// ---------------------------------------------------------------------------------------------

fn example_relays() -> Vec<PathBuf> {
    let mut relays: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/example"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.starts_with("relay-") && name.ends_with(".toml")
        })
        .collect();
    relays.sort();
    relays
}

#[test]
fn example_pops_differ_only_in_their_server_section() {
    // A resolver may ask either PoP: both must make the same decision for every client.
    let mut a = toml_table(&read("deploy/example/dns-pop-a.toml"));
    let mut b = toml_table(&read("deploy/example/dns-pop-b.toml"));
    let (server_a, server_b) = (a.remove("server").unwrap(), b.remove("server").unwrap());
    assert_eq!(a, b);
    assert_ne!(
        server_a["listen"], server_b["listen"],
        "each PoP its own addresses"
    );
}

#[test]
fn example_has_one_relay_per_region_covering_every_backend_kind() {
    let dns = toml_table(&read("deploy/example/dns-pop-a.toml"));
    let regions: BTreeSet<String> = dns["region"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(regions.len(), 3);
    let mut relay_regions = BTreeSet::new();
    let mut kinds = BTreeSet::new();
    for path in example_relays() {
        let relay = toml_table(&std::fs::read_to_string(&path).unwrap());
        let region = str_at(&relay, &["relay", "region"]).to_string();
        assert_eq!(
            path.file_name().unwrap().to_str().unwrap(),
            format!("relay-{region}.toml")
        );
        // tests/cli.rs checks relay configs beside freshly made certs/relay*.pem.
        assert_eq!(str_at(&relay, &["relay", "tls", "cert"]), "certs/relay.pem");
        assert_eq!(
            str_at(&relay, &["relay", "tls", "key"]),
            "certs/relay-key.pem"
        );
        for backend in relay["backend"].as_array().unwrap() {
            kinds.insert(backend["kind"].as_str().unwrap().to_string());
        }
        relay_regions.insert(region);
    }
    assert_eq!(
        relay_regions, regions,
        "a relay for every region, none for others"
    );
    for kind in ["vllm", "sglang", "tgi", "llamacpp", "ollama"] {
        assert!(
            kinds.contains(kind),
            "no {kind} backend in the example: {kinds:?}"
        );
    }
}
