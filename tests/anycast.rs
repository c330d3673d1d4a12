//! Anycast failover for real, inside network namespaces this test creates and deletes.
//!
//! ```text
//!   client ──► router (BIRD: BGP to both PoPs, installs the best route in its kernel)
//!  10.99.0.2    ├── PoP A 10.99.1.2, AS 65001 (preferred): BIRD + `meridian dns` on 10.53.53.53
//!               └── PoP B 10.99.2.2, AS 65002            : BIRD + `meridian dns` on 10.53.53.53
//! ```
//!
//! Each PoP's BIRD holds the anycast /32 in a `static` protocol, disabled in its config, that
//! the PoP's Meridian enables once serving (`[anycast]`). The client asks `pop.anycast.test
//! TXT` at a fixed rate with a short timeout; each PoP answers with its own name. Phases: A
//! serves; A drained (SIGUSR1) → B; A rejoins (SIGUSR2) → A; A stopped (SIGTERM: withdraw,
//! linger, close) → B; A restarted → A; A killed (Meridian SIGKILL, its BIRD frozen as in a
//! power loss: no FIN, no BGP NOTIFICATION) → B after the router's 3 s hold timer. Each
//! phase's lost queries and switch time are printed.
//!
//! Needs root, `ip` (iproute2) and `bird` (bird2). Without them the test prints `SKIP: …` and
//! passes, unless `MERIDIAN_REQUIRE_NETNS=1` (CI) turns the skip into a failure. The client's
//! prober is this test binary again, run inside the client namespace (`MERIDIAN_ANYCAST_PROBE`).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{Name, RData, RecordType},
};

const TEST_NAME: &str = "anycast_failover_between_two_pops_in_network_namespaces";
const PROBE_ENV: &str = "MERIDIAN_ANYCAST_PROBE";
const REQUIRE_ENV: &str = "MERIDIAN_REQUIRE_NETNS";
const ANYCAST: &str = "10.53.53.53";
const QNAME: &str = "pop.anycast.test.";
/// One query every 20 ms (50 per second), each lost after 250 ms without an answer.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// Answers in a row from one PoP that count as "traffic has moved there".
const STREAK: usize = 25;
/// How long a stopping PoP keeps answering after its withdrawal.
const LINGER_MS: u64 = 2000;
/// Namespaces of this test are `mrdac<pid>-<role>`; a leftover of a dead run is removed.
const NETNS_PREFIX: &str = "mrdac";

#[test]
fn anycast_failover_between_two_pops_in_network_namespaces() {
    if let Ok(spec) = std::env::var(PROBE_ENV) {
        probe_main(&spec);
        return;
    }
    if let Err(reason) = prerequisites() {
        skip(&reason);
        return;
    }
    remove_stale_namespaces();
    let mut lab = match Lab::build() {
        Ok(lab) => lab,
        Err(LabError::CannotCreateNamespaces(reason)) => {
            skip(&format!("cannot create network namespaces: {reason}"));
            return;
        }
        Err(LabError::Setup(reason)) => panic!("lab set-up failed: {reason}"),
    };
    let mut probe = lab.start_probe();
    let mut report = Vec::new();

    // PoP A is preferred by the router (PoP B's routes get a lower preference).
    let started = probe.wait_for('a', now_ms(), Duration::from_secs(30), &lab);
    println!(
        "anycast: PoP A announced and answering {:.2} s after the prober started",
        started.switch_ms as f64 / 1000.0
    );

    lab.wait_for_both_routes();
    let at = now_ms();
    lab.signal("meridian-a", "USR1");
    let drain = probe.wait_for('b', at, Duration::from_secs(20), &lab);
    report.push(("drain A (SIGUSR1)", drain));

    let at = now_ms();
    lab.signal("meridian-a", "USR2");
    let rejoin = probe.wait_for('a', at, Duration::from_secs(20), &lab);
    report.push(("rejoin A (SIGUSR2)", rejoin));

    lab.wait_for_both_routes();
    let at = now_ms();
    lab.signal("meridian-a", "TERM");
    let stop = probe.wait_for('b', at, Duration::from_secs(20), &lab);
    let exited = lab.wait_exit("meridian-a", Duration::from_secs(20));
    assert!(
        exited.success(),
        "meridian A exits cleanly on SIGTERM: {exited}"
    );
    report.push(("stop A (SIGTERM)", stop));

    let at = now_ms();
    lab.start_meridian('a');
    let restart = probe.wait_for('a', at, Duration::from_secs(30), &lab);
    report.push(("restart A", restart));

    lab.wait_for_both_routes();
    let at = now_ms();
    lab.signal("bird-a", "STOP");
    lab.kill("meridian-a");
    let kill = probe.wait_for('b', at, Duration::from_secs(30), &lab);
    report.push(("kill A (hold timer 3 s)", kill));

    println!(
        "anycast failover, {} queries/s, {} ms timeout:",
        1000 / PROBE_INTERVAL.as_millis(),
        PROBE_TIMEOUT.as_millis()
    );
    for (what, phase) in &report {
        println!("  {what:<26} {phase}");
    }
    // A drained PoP keeps answering until the route has moved, and a stopping one lingers
    // after its confirmed withdrawal: neither loses a query. A rejoining PoP is announced only
    // once it serves.
    assert_eq!(drain.lost, 0, "drain lost queries: {drain}");
    assert_eq!(rejoin.lost, 0, "rejoin lost queries: {rejoin}");
    assert_eq!(stop.lost, 0, "graceful stop lost queries: {stop}");
    assert_eq!(restart.lost, 0, "restart lost queries: {restart}");
    // A dead PoP is routed around only by BGP itself: queries are lost until the hold timer.
    assert!(kill.lost > 0, "a killed PoP cannot answer: {kill}");
    drop(probe);
}

/// Every BIRD config in `deploy/bird/` parses (`bird -p`), so an example cannot rot.
#[test]
fn shipped_bird_configs_parse() {
    if Command::new("bird").arg("--version").output().is_err() {
        skip("`bird` not found (apt-get install bird2)");
        return;
    }
    let mut configs = Vec::new();
    for folder in ["deploy/bird", "deploy/bird/lab"] {
        for entry in std::fs::read_dir(repo().join(folder)).expect("deploy/bird") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "conf") {
                configs.push(path);
            }
        }
    }
    assert!(
        configs.len() >= 4,
        "expected the PoP example and the lab: {configs:?}"
    );
    for config in configs {
        let output = Command::new("bird")
            .args(["-p", "-c"])
            .arg(&config)
            .output()
            .expect("run bird -p");
        assert!(
            output.status.success(),
            "{}: {}",
            config.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn skip(reason: &str) {
    if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
        panic!("{REQUIRE_ENV}=1 but the anycast namespace test cannot run: {reason}");
    }
    println!("SKIP (anycast namespace test): {reason}");
    eprintln!("SKIP (anycast namespace test): {reason}");
}

fn prerequisites() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    let root = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().nth(1))
        == Some("0");
    if !root {
        return Err("not running as root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    for (tool, package) in [("ip", "iproute2"), ("bird", "bird2"), ("birdc", "bird2")] {
        let found = Command::new(tool)
            .arg(if tool == "ip" { "-V" } else { "--version" })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Err(format!("`{tool}` not found (apt-get install {package})"));
        }
    }
    Ok(())
}

/// Runs a command to completion; its stderr is the error.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Namespaces left by a run that was killed before its clean-up (its pid is gone).
fn remove_stale_namespaces() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(NETNS_PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

enum LabError {
    CannotCreateNamespaces(String),
    Setup(String),
}

/// The namespaces, the processes in them, and their files. Dropping it kills every process
/// and deletes every namespace, on success and on panic alike.
struct Lab {
    dir: tempfile::TempDir,
    namespaces: Vec<String>,
    processes: Vec<(String, Child)>,
}

impl Lab {
    fn ns(role: &str) -> String {
        format!("{NETNS_PREFIX}{}-{role}", std::process::id())
    }

    fn build() -> Result<Lab, LabError> {
        let mut lab = Lab {
            dir: tempfile::tempdir().map_err(|e| LabError::Setup(e.to_string()))?,
            namespaces: Vec::new(),
            processes: Vec::new(),
        };
        for role in ["cl", "rt", "pa", "pb"] {
            let name = Lab::ns(role);
            match run("ip", &["netns", "add", &name]) {
                Ok(_) => lab.namespaces.push(name),
                Err(e) if lab.namespaces.is_empty() => {
                    return Err(LabError::CannotCreateNamespaces(e));
                }
                Err(e) => return Err(LabError::Setup(e)),
            }
        }
        lab.wire().map_err(LabError::Setup)?;
        lab.start_bird("bird-rt", "rt", "router.conf")
            .map_err(LabError::Setup)?;
        for pop in ['a', 'b'] {
            lab.start_bird(
                &format!("bird-{pop}"),
                &format!("p{pop}"),
                &format!("pop-{pop}.conf"),
            )
            .map_err(LabError::Setup)?;
            lab.write_meridian_config(pop).map_err(LabError::Setup)?;
            lab.start_meridian(pop);
        }
        Ok(lab)
    }

    fn wire(&self) -> Result<(), String> {
        let (cl, rt, pa, pb) = (Lab::ns("cl"), Lab::ns("rt"), Lab::ns("pa"), Lab::ns("pb"));
        let ip = |args: &[&str]| run("ip", args).map(drop);
        for ns in [&cl, &rt, &pa, &pb] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        // Router-side ends are named after the peer; the far end is eth0 in its namespace.
        for (local, peer, subnet) in [("c0", &cl, 0), ("pa", &pa, 1), ("pb", &pb, 2)] {
            ip(&[
                "-n", &rt, "link", "add", local, "type", "veth", "peer", "name", "eth0", "netns",
                peer,
            ])?;
            ip(&[
                "-n",
                &rt,
                "addr",
                "add",
                &format!("10.99.{subnet}.1/24"),
                "dev",
                local,
            ])?;
            ip(&["-n", &rt, "link", "set", local, "up"])?;
            let far = format!("10.99.{subnet}.2/24");
            ip(&["-n", peer, "addr", "add", &far, "dev", "eth0"])?;
            ip(&["-n", peer, "link", "set", "eth0", "up"])?;
            let gateway = format!("10.99.{subnet}.1");
            ip(&["-n", peer, "route", "add", "default", "via", &gateway])?;
        }
        for pop in [&pa, &pb] {
            ip(&[
                "-n",
                pop,
                "addr",
                "add",
                &format!("{ANYCAST}/32"),
                "dev",
                "lo",
            ])?;
        }
        // Forward, and accept replies from whichever PoP while the best route moves.
        run(
            "ip",
            &[
                "netns",
                "exec",
                &rt,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ],
        )
        .map(drop)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn spawn(&mut self, name: &str, ns: &str, program: &Path, args: &[&str]) -> Result<(), String> {
        let log =
            std::fs::File::create(self.path(&format!("{name}.log"))).map_err(|e| e.to_string())?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .env("RUST_LOG", "info,meridian::anycast=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{name}: {e}"))?;
        // A process of the same name (a restarted PoP) replaces the exited one.
        self.processes.retain(|(n, _)| n != name);
        self.processes.push((name.to_owned(), child));
        Ok(())
    }

    /// Runs BIRD with a config of `deploy/bird/lab/` as shipped.
    fn start_bird(&mut self, name: &str, role: &str, config: &str) -> Result<(), String> {
        let conf = repo().join("deploy/bird/lab").join(config);
        let socket = self.path(&format!("{name}.ctl"));
        let pid = self.path(&format!("{name}.pid"));
        let args = [
            "-f",
            "-c",
            conf.to_str().unwrap_or_default(),
            "-s",
            socket.to_str().unwrap_or_default(),
            "-P",
            pid.to_str().unwrap_or_default(),
        ];
        self.spawn(name, &Lab::ns(role), Path::new("bird"), &args)?;
        // Its control socket answering is BIRD being ready.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if Instant::now() > deadline {
                return Err(format!("{name} did not open {}", socket.display()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn write_meridian_config(&self, pop: char) -> Result<(), String> {
        let zone = format!(
            "$ORIGIN anycast.test.\n\
             @    60 IN SOA ns hostmaster 1 3600 600 86400 60\n\
             @    60 IN NS  ns\n\
             ns   60 IN A   {ANYCAST}\n\
             pop   0 IN TXT \"{pop}\"\n"
        );
        let config = format!(
            "[server]\nlisten = [\"{ANYCAST}:53\"]\n\n\
             [[zone]]\norigin = \"anycast.test.\"\nfile = \"pop-{pop}.zone\"\n\n\
             [anycast]\nbird_socket = \"{}\"\nprotocol = \"anycast_dns\"\ncheck_interval_ms = 200\n",
            self.path(&format!("bird-{pop}.ctl")).display()
        );
        std::fs::write(self.path(&format!("pop-{pop}.zone")), zone).map_err(|e| e.to_string())?;
        std::fs::write(self.path(&format!("pop-{pop}.toml")), config).map_err(|e| e.to_string())
    }

    fn start_meridian(&mut self, pop: char) {
        let config = self.path(&format!("pop-{pop}.toml"));
        let ready = self.path(&format!("meridian-{pop}.ready"));
        let _ = std::fs::remove_file(&ready);
        let linger = LINGER_MS.to_string();
        let args = [
            "dns",
            "--config",
            config.to_str().unwrap_or_default(),
            "--ready-file",
            ready.to_str().unwrap_or_default(),
            "--withdraw-linger-ms",
            &linger,
        ];
        let name = format!("meridian-{pop}");
        self.spawn(
            &name,
            &Lab::ns(&format!("p{pop}")),
            Path::new(env!("CARGO_BIN_EXE_meridian")),
            &args,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready.exists() {
            if let Some(status) = self.child(&name).try_wait().ok().flatten() {
                panic!(
                    "{name} exited at start-up ({status}):\n{}",
                    self.log_tail(&name)
                );
            }
            assert!(Instant::now() < deadline, "{name} never became ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn child(&mut self, name: &str) -> &mut Child {
        &mut self
            .processes
            .iter_mut()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no process {name}"))
            .1
    }

    fn signal(&mut self, name: &str, signal: &str) {
        let pid = self.child(name).id().to_string();
        run("kill", &["-s", signal, &pid]).unwrap_or_else(|e| panic!("{e}"));
    }

    fn kill(&mut self, name: &str) {
        let child = self.child(name);
        let _ = child.kill();
        let _ = child.wait();
    }

    fn wait_exit(&mut self, name: &str, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child(name).try_wait().ok().flatten() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the router holds a route from each PoP, so a phase measures the failover
    /// and not a BGP session still coming up (or re-established after a collision).
    fn wait_for_both_routes(&self) {
        let socket = self.path("bird-rt.ctl");
        let socket = socket.to_str().unwrap_or_default();
        let prefix = format!("{ANYCAST}/32");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let routes =
                run("birdc", &["-s", socket, "show", "route", &prefix]).unwrap_or_default();
            if routes.contains("[pop_a ") && routes.contains("[pop_b ") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the router never held both PoPs' routes: {routes}\n{}",
                self.diagnosis()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }

    /// What to look at when a phase does not converge.
    fn diagnosis(&self) -> String {
        let mut text = String::new();
        if let Ok(route) = run("ip", &["-n", &Lab::ns("rt"), "route", "show", ANYCAST]) {
            text.push_str(&format!("router's route to {ANYCAST}: {route}\n"));
        }
        for (name, _) in &self.processes {
            text.push_str(&format!("--- {name}.log (tail)\n{}\n", self.log_tail(name)));
        }
        text
    }

    fn start_probe(&mut self) -> Probe {
        let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
        let spec = format!(
            "{ANYCAST}:53,{},{}",
            PROBE_INTERVAL.as_millis(),
            PROBE_TIMEOUT.as_millis()
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &Lab::ns("cl")])
            .arg(exe)
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(PROBE_ENV, spec)
            .env_remove(REQUIRE_ENV)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("prober: {e}"));
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .unwrap_or_else(|| panic!("prober stdout"));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(result) = ProbeResult::parse(&line)
                    && tx.send(result).is_err()
                {
                    return;
                }
            }
        });
        self.processes.push(("prober".to_owned(), child));
        Probe {
            _stdin: stdin,
            results: rx,
            seen: BTreeMap::new(),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnosis());
        }
        for (_, child) in &mut self.processes {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in &self.namespaces {
            if let Err(e) = run("ip", &["netns", "del", ns]) {
                eprintln!("clean-up: {e}");
            }
        }
    }
}

/// One query's fate, as the prober reports it.
#[derive(Clone, Copy, Debug)]
struct ProbeResult {
    seq: u64,
    sent_ms: u64,
    /// The PoP that answered (`'a'`, `'b'`), or `None` when lost.
    pop: Option<char>,
}

impl ProbeResult {
    fn parse(line: &str) -> Option<ProbeResult> {
        let mut fields = line.strip_prefix("probe ")?.split_whitespace();
        let seq = fields.next()?.parse().ok()?;
        let sent_ms = fields.next()?.parse().ok()?;
        let pop = match fields.next()? {
            "lost" => None,
            answer => answer.chars().next(),
        };
        Some(ProbeResult { seq, sent_ms, pop })
    }
}

/// What one phase cost.
#[derive(Clone, Copy, Debug)]
struct Phase {
    /// Queries sent from the event until traffic settled on the new PoP.
    sent: usize,
    lost: usize,
    /// From the event to the first answer of the new PoP.
    switch_ms: u64,
    /// From the first lost query sent to the last one (0 when none was lost).
    outage_ms: u64,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "lost {:>3} queries ({:.2} s without answers); new PoP answering {:.2} s after the event \
             ({} queries before it)",
            self.lost,
            self.outage_ms as f64 / 1000.0,
            self.switch_ms as f64 / 1000.0,
            self.sent
        )
    }
}

struct Probe {
    /// Closing it stops the prober.
    _stdin: Option<ChildStdin>,
    results: mpsc::Receiver<ProbeResult>,
    seen: BTreeMap<u64, ProbeResult>,
}

impl Probe {
    /// Waits until `STREAK` consecutive queries sent after `since_ms` were answered by `pop`,
    /// and measures the queries sent from `since_ms` up to that streak.
    fn wait_for(&mut self, pop: char, since_ms: u64, limit: Duration, lab: &Lab) -> Phase {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(phase) = self.settled(pop, since_ms) {
                return phase;
            }
            assert!(
                Instant::now() < deadline,
                "traffic did not settle on PoP {pop} within {limit:?}; last results: {:?}\n{}",
                self.seen.values().rev().take(10).collect::<Vec<_>>(),
                lab.diagnosis()
            );
            match self.results.recv_timeout(Duration::from_millis(100)) {
                Ok(result) => {
                    self.seen.insert(result.seq, result);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("the prober stopped\n{}", lab.diagnosis())
                }
            }
        }
    }

    fn settled(&self, pop: char, since_ms: u64) -> Option<Phase> {
        let window: Vec<ProbeResult> = self
            .seen
            .values()
            .filter(|r| r.sent_ms >= since_ms)
            .copied()
            .collect();
        let first_seq = window.first()?.seq;
        let mut run = 0usize;
        for (expected, (i, result)) in (first_seq..).zip(window.iter().enumerate()) {
            if result.seq != expected {
                return None; // a query still pending: its fate is unknown yet
            }
            run = if result.pop == Some(pop) { run + 1 } else { 0 };
            if run == STREAK {
                let before_streak = &window[..i + 1 - STREAK];
                let lost: Vec<&ProbeResult> =
                    before_streak.iter().filter(|r| r.pop.is_none()).collect();
                let first_answer = window[..=i]
                    .iter()
                    .find(|r| r.pop == Some(pop))
                    .map_or(0, |r| r.sent_ms);
                return Some(Phase {
                    sent: before_streak.len(),
                    lost: lost.len(),
                    switch_ms: first_answer.saturating_sub(since_ms),
                    outage_ms: match (lost.first(), lost.last()) {
                        (Some(a), Some(b)) => {
                            b.sent_ms - a.sent_ms + PROBE_INTERVAL.as_millis() as u64
                        }
                        _ => 0,
                    },
                });
            }
        }
        None
    }
}

/// Queries awaiting an answer: DNS id → (seq, sent_ms, sent_at).
type Pending = BTreeMap<u16, (u64, u64, Instant)>;

/// The prober, inside the client namespace: `address,interval_ms,timeout_ms`. Prints one
/// `probe <seq> <sent_ms> <a|b|lost>` line per query, until its stdin closes (or 10 minutes).
fn probe_main(spec: &str) {
    let fields: Vec<&str> = spec.split(',').collect();
    let target: SocketAddr = fields[0].parse().expect("probe target");
    let interval = Duration::from_millis(fields[1].parse().expect("interval"));
    let timeout = Duration::from_millis(fields[2].parse().expect("timeout"));
    let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(10)))
        .expect("read timeout");
    let socket = Arc::new(socket);
    let stop = Arc::new(AtomicBool::new(false));
    let pending: Arc<Mutex<Pending>> = Arc::default();

    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            stop.store(true, Ordering::SeqCst);
        });
    }
    let receiver = {
        let (socket, stop, pending) = (socket.clone(), stop.clone(), pending.clone());
        std::thread::spawn(move || {
            let mut buffer = [0u8; 1500];
            while !stop.load(Ordering::SeqCst) {
                let Ok(len) = socket.recv(&mut buffer) else {
                    continue;
                };
                let Ok(message) = Message::from_vec(&buffer[..len]) else {
                    continue;
                };
                let answered_by = message
                    .answers
                    .iter()
                    .find_map(|record| match &record.data {
                        RData::TXT(txt) => txt
                            .txt_data
                            .first()
                            .map(|s| String::from_utf8_lossy(s).into_owned()),
                        _ => None,
                    });
                let Some((seq, sent_ms, _)) = pending.lock().unwrap().remove(&message.metadata.id)
                else {
                    continue; // late: already reported lost
                };
                let pop = answered_by.unwrap_or_else(|| "?".to_owned());
                println!("probe {seq} {sent_ms} {pop}");
            }
        })
    };

    let name = Name::from_ascii(QNAME).expect("qname");
    let started = Instant::now();
    let limit = Duration::from_secs(600);
    let mut seq: u64 = 0;
    while !stop.load(Ordering::SeqCst) && started.elapsed() < limit {
        let id = (seq % 65_536) as u16;
        let mut query = Message::new(id, MessageType::Query, OpCode::Query);
        query.add_query(Query::query(name.clone(), RecordType::TXT));
        let bytes = query.to_vec().expect("encode");
        pending
            .lock()
            .unwrap()
            .insert(id, (seq, now_ms(), Instant::now()));
        let _ = socket.send_to(&bytes, target);
        let lost: Vec<(u16, u64, u64)> = {
            let mut pending = pending.lock().unwrap();
            let expired: Vec<(u16, u64, u64)> = pending
                .iter()
                .filter(|(_, (_, _, at))| at.elapsed() > timeout)
                .map(|(id, (seq, sent_ms, _))| (*id, *seq, *sent_ms))
                .collect();
            for (id, _, _) in &expired {
                pending.remove(id);
            }
            expired
        };
        for (_, seq, sent_ms) in lost {
            println!("probe {seq} {sent_ms} lost");
        }
        let _ = std::io::stdout().flush();
        seq += 1;
        let next = started + interval * u32::try_from(seq).unwrap_or(u32::MAX);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    stop.store(true, Ordering::SeqCst);
    let _ = receiver.join();
}
