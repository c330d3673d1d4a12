//! The controller against a fake BIRD on a real unix socket: what BIRD is told, and when.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixListener,
};

use super::*;

/// Answers `enable "p"` / `disable "p"` like BIRD 2 and records every switch.
struct FakeBird {
    enabled: Arc<Mutex<Vec<bool>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeBird {
    fn start(path: &Path, protocol: &'static str) -> FakeBird {
        let listener = UnixListener::bind(path).unwrap();
        let enabled = Arc::new(Mutex::new(vec![false]));
        let history = enabled.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (read, mut write) = stream.into_split();
                let _ = write.write_all(b"0001 BIRD 2.0.12 ready.\n").await;
                let mut command = String::new();
                if BufReader::new(read).read_line(&mut command).await.is_err() {
                    continue;
                }
                let reply = {
                    let mut history = history.lock().unwrap();
                    let current = *history.last().unwrap();
                    match command.trim_end() {
                        c if c == format!("enable \"{protocol}\"") => {
                            history.push(true);
                            if current {
                                format!("0010-{protocol}: already enabled\n0000 \n")
                            } else {
                                format!("0011-{protocol}: enabled\n0000 \n")
                            }
                        }
                        c if c == format!("disable \"{protocol}\"") => {
                            history.push(false);
                            if current {
                                format!("0009-{protocol}: disabled\n0000 \n")
                            } else {
                                format!("0008-{protocol}: already disabled\n0000 \n")
                            }
                        }
                        _ => "8003 No protocols match\n".to_owned(),
                    }
                };
                let _ = write.write_all(reply.as_bytes()).await;
            }
        });
        FakeBird { enabled, task }
    }

    fn enabled(&self) -> bool {
        *self.enabled.lock().unwrap().last().unwrap()
    }

    /// Every state BIRD was put in, starting from disabled, repeats removed.
    fn switches(&self) -> Vec<bool> {
        let mut history = self.enabled.lock().unwrap().clone();
        history.dedup();
        history
    }

    async fn until_enabled(&self, enabled: bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.enabled() != enabled {
            assert!(
                Instant::now() < deadline,
                "BIRD never became enabled={enabled}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for FakeBird {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn config(socket: PathBuf, max_health_silence: Option<Duration>) -> model::Anycast {
    model::Anycast {
        bird_socket: socket,
        protocol: "anycast_dns".to_owned(),
        max_health_silence,
        check_interval: Duration::from_millis(50),
    }
}

async fn until_status(
    handle: &AnycastHandle,
    what: &str,
    check: impl Fn(&AnnouncementStatus) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check(&handle.status()) {
        assert!(
            Instant::now() < deadline,
            "{what}: last {:?}",
            handle.status()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn announces_once_serving_drains_and_withdraws_before_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bird.ctl");
    let bird = FakeBird::start(&socket, "anycast_dns");
    let handle = AnycastController::start(&config(socket, None), Probes::default());

    until_status(&handle, "told BIRD it is withdrawn", |s| {
        s.bird_confirmed == Some(false)
    })
    .await;
    assert!(!bird.enabled(), "nothing announced before serving");

    handle.serving();
    bird.until_enabled(true).await;
    handle.set_draining(true);
    bird.until_enabled(false).await;
    handle.set_draining(false);
    bird.until_enabled(true).await;

    assert_eq!(
        handle.withdraw_and_wait(Duration::from_secs(5)).await,
        Withdrawal::Confirmed
    );
    assert!(!bird.enabled());
    assert_eq!(bird.switches(), [false, true, false, true, false]);
    let metrics = handle.metrics().encode();
    assert!(
        metrics.contains("meridian_anycast_announced 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meridian_anycast_withdrawals_total{reason=\"draining\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meridian_anycast_withdrawals_total{reason=\"shutting_down\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_missing_bird_is_reported_and_never_blocks_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bird.ctl");
    let handle = AnycastController::start(&config(socket.clone(), None), Probes::default());
    handle.serving();
    until_status(&handle, "BIRD error reported", |s| {
        s.intent == Intent::Announce && s.last_error.is_some()
    })
    .await;
    let metrics = handle.metrics().encode();
    assert!(metrics.contains("meridian_anycast_bird_up 0"), "{metrics}");
    assert!(metrics.contains("meridian_anycast_wanted 1"), "{metrics}");
    assert!(
        metrics.contains("meridian_anycast_bird_errors_total{error=\"unreachable\"}"),
        "{metrics}"
    );

    // BIRD starts later: the backoff retries find it.
    let bird = FakeBird::start(&socket, "anycast_dns");
    bird.until_enabled(true).await;
    until_status(&handle, "confirmed", |s| s.bird_confirmed == Some(true)).await;
    assert!(handle.status().last_error.is_none());
    drop(bird);

    // BIRD gone again at shutdown: nothing to withdraw, and no waiting for the timeout.
    std::fs::remove_file(&socket).unwrap();
    match handle.withdraw_and_wait(Duration::from_secs(30)).await {
        Withdrawal::BirdNotRunning(error) => assert_eq!(error.label(), "unreachable"),
        other => panic!("expected BirdNotRunning, got {other:?}"),
    }
}

#[tokio::test]
async fn a_protocol_bird_does_not_have_is_a_rejected_error() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bird.ctl");
    let _bird = FakeBird::start(&socket, "other_name");
    let handle = AnycastController::start(&config(socket.clone(), None), Probes::default());
    handle.serving();
    until_status(&handle, "rejected", |s| {
        matches!(s.last_error, Some(BirdError::Rejected { code: 8003, .. }))
    })
    .await;
    assert!(matches!(
        handle.withdraw_and_wait(Duration::from_millis(300)).await,
        Withdrawal::Unconfirmed(Some(BirdError::Rejected { code: 8003, .. }))
    ));
    let configured = config(socket, None);
    assert!(matches!(
        check_protocol(&configured).await,
        Err(BirdError::Rejected { .. })
    ));
}

#[tokio::test]
async fn a_silent_health_plane_withdraws_and_reports_bring_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bird.ctl");
    let bird = FakeBird::start(&socket, "anycast_dns");
    let last_report: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(Some(now())));
    let probe = last_report.clone();
    let probes = Probes {
        last_health_report: Some(Arc::new(move || *probe.lock().unwrap())),
        snapshot_usable: None,
    };
    let handle =
        AnycastController::start(&config(socket, Some(Duration::from_millis(300))), probes);
    handle.serving();
    bird.until_enabled(true).await;
    // No report refreshes the probe: silence exceeds 300 ms.
    bird.until_enabled(false).await;
    assert!(matches!(
        handle.status().intent,
        Intent::Withdraw(WithdrawReason::HealthSilent { .. })
    ));
    // Reports flow again: announced after the proof period (3 check intervals).
    let feeding = {
        let last_report = last_report.clone();
        tokio::spawn(async move {
            loop {
                *last_report.lock().unwrap() = Some(now());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    bird.until_enabled(true).await;
    feeding.abort();
    assert_eq!(bird.switches(), [false, true, false, true]);
}

#[tokio::test]
async fn a_failed_listener_withdraws() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bird.ctl");
    let bird = FakeBird::start(&socket, "anycast_dns");
    let handle = AnycastController::start(&config(socket, None), Probes::default());
    handle.serving();
    bird.until_enabled(true).await;
    handle.listener_failed();
    bird.until_enabled(false).await;
    assert_eq!(
        handle.status().intent,
        Intent::Withdraw(WithdrawReason::ListenerFailed)
    );
}

#[test]
fn check_says_what_bird_would_be_driven_or_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bird.ctl");
    // No BIRD here: not an error (a build machine).
    let outcome = check_blocking(&config(socket.clone(), None)).unwrap();
    assert!(matches!(outcome, CheckOutcome::NotChecked(_)), "{outcome}");
    // A name that could switch off every protocol is refused before asking anyone.
    let mut star = config(socket.clone(), None);
    star.protocol = "*".to_owned();
    assert!(matches!(
        check_blocking(&star),
        Err(BirdError::InvalidProtocolName { .. })
    ));

    // A BIRD that answers `show protocols`.
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let bird = std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        for reply in [
            "2002-Name       Proto      Table      State  Since         Info\n\
             1002-anycast_dns Static     master4    up     08:08:56.914  \n0000 \n",
            "8003 No protocols match\n",
        ] {
            let (mut stream, _) = listener.accept().unwrap();
            stream.write_all(b"0001 BIRD 2.0.12 ready.\n").unwrap();
            let mut command = String::new();
            std::io::BufReader::new(&stream)
                .read_line(&mut command)
                .unwrap();
            stream.write_all(reply.as_bytes()).unwrap();
        }
    });
    let outcome = check_blocking(&config(socket.clone(), None)).unwrap();
    assert_eq!(
        outcome.to_string(),
        "anycast drives BIRD protocol(s) anycast_dns (Static, up)"
    );
    assert!(matches!(
        check_blocking(&config(socket, None)),
        Err(BirdError::Rejected { code: 8003, .. })
    ));
    bird.join().unwrap();
}
