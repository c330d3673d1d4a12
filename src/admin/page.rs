//! The status page (`GET /`): server-rendered HTML, no scripts, no external assets.
//!
//! Pure: it renders a [`Status`] and recent decisions that the caller gathered. Every string
//! that reaches the page goes through [`escape`], whatever its origin, so a name can never
//! become markup.

use std::{fmt::Write as _, time::SystemTime};

use super::{model::Status, recent::RecentDecision};

/// Seconds between the page's automatic reloads.
const REFRESH_SECONDS: u32 = 5;

/// `text` safe for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub fn render(status: &Status, decisions: &[RecentDecision], now: SystemTime) -> String {
    let mut page = String::with_capacity(8 * 1024);
    // `write!` into a String cannot fail.
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Meridian DNS node</title><style>{STYLE}</style></head><body>\n\
         <h1>Meridian DNS node</h1>\n<p>Configuration generation <b>{}</b> · TTL cap <b>{}</b> · \
         health channel <b>{}</b></p>\n",
        status.generation,
        status
            .max_ttl
            .map_or_else(|| "none".to_owned(), |ttl| format!("{ttl} s")),
        escape(&status.health_channel.as_ref().map_or_else(
            || "not configured".to_owned(),
            |channel| format!("listening on {}", channel.listen)
        )),
    );

    page.push_str(
        "<h2>Regions</h2>\n<table><thead><tr><th>Region</th><th>Serving</th><th>Admin</th>\
         <th>Health</th><th>Headroom</th><th>Spilling</th><th>Weight</th><th>Report age</th>\
         </tr></thead><tbody>\n",
    );
    for region in &status.regions {
        let serving = if region.serving { "yes" } else { "no" };
        let _ = writeln!(
            page,
            "<tr class=\"{}\"><td>{}</td><td>{serving}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{} %</td><td>{}</td></tr>",
            if region.serving { "up" } else { "out" },
            escape(&region.id),
            escape(region.admin.as_str()),
            escape(&region.health),
            region
                .headroom
                .map_or_else(|| "–".to_owned(), |h| format!("{:.0} %", h * 100.0)),
            region
                .spilling
                .map_or("–", |s| if s { "yes" } else { "no" }),
            region.weight,
            region.report_age_ms.map_or_else(
                || "never".to_owned(),
                |ms| format!("{:.1} s", ms as f64 / 1000.0)
            ),
        );
    }
    page.push_str("</tbody></table>\n");

    page.push_str(
        "<h2>Recent decisions</h2>\n<table><thead><tr><th>Age</th><th>Client</th><th>Name</th>\
         <th>Answer</th><th>Reason</th></tr></thead><tbody>\n",
    );
    if decisions.is_empty() {
        page.push_str("<tr><td colspan=\"5\">none yet</td></tr>\n");
    }
    for decision in decisions {
        let age = now.duration_since(decision.at).map_or_else(
            |_| "now".to_owned(),
            |d| format!("{:.1} s", d.as_secs_f64()),
        );
        let regions: Vec<&str> = decision.regions.iter().map(|r| &**r).collect();
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&age),
            escape(&decision.client.to_string()),
            escape(&decision.name),
            escape(&regions.join(", ")),
            escape(decision.reason),
        );
    }
    page.push_str(
        "</tbody></table>\n<p class=\"foot\">JSON: <a href=\"/v1/status\">/v1/status</a> · \
         <a href=\"/v1/decisions\">/v1/decisions</a> · <a href=\"/metrics\">/metrics</a></p>\n\
         </body></html>\n",
    );
    page
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin-bottom:1.5em}\
th,td{border:1px solid #ccc;padding:.3em .7em;text-align:left}\
th{background:#f3f3f3}tr.out td{background:#fde8e8}.foot{color:#666}";

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;
    use crate::{admin::model::RegionView, operator_state::AdminState};

    #[test]
    fn escapes_every_markup_character() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn renders_regions_and_decisions_without_injecting_markup() {
        let status = Status {
            generation: 7,
            max_ttl: Some(5),
            regions: vec![RegionView {
                id: "eu-west".into(),
                admin: AdminState::Drain,
                weight: 50,
                health: "up".into(),
                spilling: Some(false),
                headroom: Some(0.42),
                report_age_ms: Some(1500),
                serving: false,
                endpoints: vec!["198.51.100.10".into()],
            }],
            health_channel: None,
        };
        let evil: Arc<str> = Arc::from("<script>alert(1)</script>");
        let decision = RecentDecision {
            at: SystemTime::UNIX_EPOCH,
            client: "192.0.2.0/24".parse().unwrap(),
            name: evil.clone(),
            regions: vec![evil],
            reason: "geo-country",
        };
        let page = render(
            &status,
            &[decision],
            SystemTime::UNIX_EPOCH + Duration::from_secs(3),
        );
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        for expected in [
            "eu-west",
            "drain",
            "42 %",
            "1.5 s",
            "50 %",
            "5 s",
            "192.0.2.0/24",
            "3.0 s",
        ] {
            assert!(page.contains(expected), "{expected} missing:\n{page}");
        }
    }
}
