//! Hot reload through the real paths: a storm of reloads under query load, bad reloads that
//! must leave the last good snapshot serving, and the binary reloading on SIGHUP and on file
//! changes.

mod common;

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::*;
use hickory_proto::rr::{RData, RecordType};
use meridian::snapshot::ReloadOutcome;

const EU_WEST_V4: &str = "198.51.100.10";
const EU_WEST_V4_ALT: &str = "198.51.100.11";

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// The bundled config with eu-west's IPv4 endpoint replaced.
fn config_with_eu_west(scratch: &Scratch, address: &str) -> String {
    let original = std::fs::read_to_string(repo().join("zones/meridian.toml")).unwrap();
    assert!(
        original.contains(EU_WEST_V4),
        "example config changed: update this test"
    );
    let _ = scratch;
    original.replace(EU_WEST_V4, address)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_storm_under_load_answers_every_query_and_switches() {
    let scratch = Scratch::new();
    let server = TestServer::start(&scratch.config()).await;
    let variants = [
        config_with_eu_west(&scratch, EU_WEST_V4_ALT),
        config_with_eu_west(&scratch, EU_WEST_V4),
    ];

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let querier = {
        let (stop, sent, answered) = (stop.clone(), sent.clone(), answered.clone());
        let addr = server.addr;
        tokio::spawn(async move {
            let client = udp_client(addr).await;
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut unexpected = Vec::new();
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                sent.fetch_add(1, Ordering::Relaxed);
                let response = ask(
                    &client,
                    "api.example.test.",
                    RecordType::A,
                    Some("81.2.69.0/24"),
                )
                .await;
                let got = addresses(&response);
                if got == vec![ip(EU_WEST_V4)] || got == vec![ip(EU_WEST_V4_ALT)] {
                    answered.fetch_add(1, Ordering::Relaxed);
                } else {
                    unexpected.push(got);
                }
            }
            unexpected
        })
    };

    let mut generations = Vec::new();
    for round in 0..50 {
        scratch.replace("zones/meridian.toml", &variants[round % 2]);
        let store = server.store.clone();
        match tokio::task::spawn_blocking(move || store.reload())
            .await
            .unwrap()
        {
            ReloadOutcome::Loaded { generation, .. } => generations.push(generation),
            ReloadOutcome::Rejected(error) => panic!("round {round}: {error}"),
        }
    }
    // The last variant written is the original address: the answer must have switched back.
    let client = udp_client(server.addr).await;
    let response = ask(
        &client,
        "api.example.test.",
        RecordType::A,
        Some("81.2.69.0/24"),
    )
    .await;
    assert_eq!(addresses(&response), vec![ip(EU_WEST_V4)]);
    let midway = {
        scratch.replace("zones/meridian.toml", &variants[0]);
        let store = server.store.clone();
        tokio::task::spawn_blocking(move || store.reload())
            .await
            .unwrap();
        ask(
            &client,
            "api.example.test.",
            RecordType::A,
            Some("81.2.69.0/24"),
        )
        .await
    };
    assert_eq!(
        addresses(&midway),
        vec![ip(EU_WEST_V4_ALT)],
        "new config serves at once"
    );

    stop.store(true, Ordering::Relaxed);
    let unexpected = querier.await.unwrap();
    assert!(
        unexpected.is_empty(),
        "answers outside both configs: {unexpected:?}"
    );
    let (sent, answered) = (
        sent.load(Ordering::Relaxed),
        answered.load(Ordering::Relaxed),
    );
    assert!(sent > 0);
    assert_eq!(sent, answered, "every query during the storm was answered");
    assert!(
        generations.windows(2).all(|w| w[0] < w[1]),
        "generations increase"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_bad_reload_keeps_the_last_good_snapshot() {
    let scratch = Scratch::new();
    let server = TestServer::start(&scratch.config()).await;
    let client = udp_client(server.addr).await;
    let generation = server.store.load().generation;

    let bad_inputs: Vec<(&str, String)> = vec![
        ("zones/meridian.toml", "this is [not toml".to_string()),
        (
            "zones/meridian.toml",
            scratch
                .read("zones/meridian.toml")
                .replace("ttl = 30", "ttl = 0"),
        ),
        (
            "zones/example.test.zone",
            scratch.read("zones/example.test.zone") + "\nbroken 300 IN AAA 1.2.3.4\n",
        ),
        ("geoip/demo.mmdb", "not a database".to_string()),
        (
            "zones/operator-state.json",
            "{\"version\":1,\"regions\":".to_string(),
        ),
    ];
    for (file, text) in bad_inputs {
        let good = std::fs::read(scratch.path(file)).ok();
        scratch.replace(file, &text);
        match server.store.reload() {
            ReloadOutcome::Rejected(error) => {
                assert!(
                    !error.to_string().is_empty(),
                    "{file}: error explains itself"
                );
            }
            ReloadOutcome::Loaded { .. } => panic!("{file}: a broken file was accepted"),
        }
        assert_eq!(
            server.store.load().generation,
            generation,
            "{file}: still the old snapshot"
        );
        let response = ask(
            &client,
            "api.example.test.",
            RecordType::A,
            Some("81.2.69.0/24"),
        )
        .await;
        assert_eq!(
            addresses(&response),
            vec![ip(EU_WEST_V4)],
            "{file}: still answering"
        );
        match good {
            Some(bytes) => std::fs::write(scratch.path(file), bytes).unwrap(),
            None => std::fs::remove_file(scratch.path(file)).unwrap(),
        }
    }
    assert!(matches!(
        server.store.reload(),
        ReloadOutcome::Loaded { .. }
    ));
    server.stop().await;
}

/// The generation the binary reports in its `_why` answer.
async fn served_generation(
    client: &hickory_net::client::Client<hickory_net::runtime::TokioRuntimeProvider>,
) -> u64 {
    let response = ask(client, "_why.api.example.test.", RecordType::TXT, None).await;
    for record in &response.answers {
        if let RData::TXT(txt) = &record.data {
            let text = txt.to_string();
            if let Some(rest) = text.split("generation=").nth(1) {
                return rest
                    .trim()
                    .trim_matches('"')
                    .parse()
                    .expect("generation number");
            }
        }
    }
    panic!("no generation in {response:?}");
}

/// Polls (bounded) until `check` holds.
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    common::eventually_true(what, Duration::from_secs(15), check).await
}

#[tokio::test]
async fn binary_reloads_on_sighup_and_on_file_change() {
    let scratch = Scratch::new();
    let config = scratch.config();
    let server = Binary::dns(&["--config", config.to_str().unwrap()]);
    let client = udp_client(server.udp).await;
    let first = served_generation(&client).await;

    server.signal("HUP");
    eventually("SIGHUP reloads", || async {
        served_generation(&client).await > first
    })
    .await;

    // A zone change is picked up without a signal.
    let zone = scratch.read("zones/example.test.zone");
    assert!(zone.contains("www"), "example zone has www");
    scratch.replace(
        "zones/example.test.zone",
        &format!("{zone}\nreloaded 300 IN A 192.0.2.99\n"),
    );
    eventually("zone file change reloads", || async {
        addresses(&ask(&client, "reloaded.example.test.", RecordType::A, None).await)
            == vec![ip("192.0.2.99")]
    })
    .await;

    // Draining through the operator state file moves London to us-east.
    scratch.replace(
        "zones/operator-state.json",
        r#"{"version":1,"regions":{"eu-west":{"admin":"drain"}}}"#,
    );
    eventually("operator state change reloads", || async {
        addresses(
            &ask(
                &client,
                "api.example.test.",
                RecordType::A,
                Some("81.2.69.0/24"),
            )
            .await,
        ) == vec![ip("192.0.2.10")]
    })
    .await;

    // A broken config is rejected and the server keeps answering from the last good one.
    let before = served_generation(&client).await;
    scratch.replace("zones/meridian.toml", "[server\n");
    server.signal("HUP");
    // The rejection is visible in the metrics; poll for it rather than sleeping.
    let metrics = server.ready["metrics"].as_str().map(str::to_string);
    if let Some(metrics) = metrics {
        eventually("rejected reload counted", || {
            let metrics = metrics.clone();
            async move {
                tokio::task::spawn_blocking(move || scrape(&metrics))
                    .await
                    .unwrap()
                    .contains("meridian_dns_reloads_total{result=\"rejected\"}")
            }
        })
        .await;
    }
    assert_eq!(
        served_generation(&client).await,
        before,
        "still the last good snapshot"
    );
    assert_eq!(
        addresses(
            &ask(
                &client,
                "api.example.test.",
                RecordType::A,
                Some("81.2.69.0/24")
            )
            .await
        ),
        vec![ip("192.0.2.10")]
    );
}

/// `GET /metrics` with a plain blocking socket (a real HTTP exchange, no client library).
fn scrape(address: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body
}

/// Kubernetes updates a mounted ConfigMap by swapping a `..data` symlink; the visible names
/// are symlinks through it and never change themselves. The server must still reload.
#[tokio::test]
async fn binary_reloads_when_a_kubernetes_style_mount_swaps_its_data_link() {
    use std::os::unix::fs::symlink;
    let scratch = Scratch::new();
    let mount = scratch.path("mount");
    let version = |name: &str, zone_extra: &str| {
        let folder = mount.join(name);
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(
            folder.join("meridian.toml"),
            scratch.read("zones/meridian.toml"),
        )
        .unwrap();
        let zone = scratch.read("zones/example.test.zone") + zone_extra;
        std::fs::write(folder.join("example.test.zone"), zone).unwrap();
    };
    version("..v1", "");
    symlink("..v1", mount.join("..data")).unwrap();
    for file in ["meridian.toml", "example.test.zone"] {
        symlink(format!("..data/{file}"), mount.join(file)).unwrap();
    }
    // The config names ../geoip/demo.mmdb: the mount sits beside the scratch geoip folder.
    let config = mount.join("meridian.toml");
    let server = Binary::dns(&["--config", config.to_str().unwrap()]);
    let client = udp_client(server.udp).await;
    let before = ask(&client, "k8s.example.test.", RecordType::A, None).await;
    assert!(addresses(&before).is_empty(), "not there yet");

    version("..v2", "\nk8s 300 IN A 192.0.2.77\n");
    symlink("..v2", mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    eventually("the swapped mount is reloaded", || async {
        addresses(&ask(&client, "k8s.example.test.", RecordType::A, None).await)
            == vec![ip("192.0.2.77")]
    })
    .await;
}
