//! `tuning/grafana-dashboard.json` against a real scrape: start the real binary (tenant
//! labels on, some traffic), scrape `/metrics`, and check every metric name in every
//! query of the dashboard (`expr`, and the variables' queries) is exported, and every
//! family the scrape declares (`# TYPE`) is named by some query. Histogram series
//! (`_bucket`, `_sum`, `_count`) count when their family is a histogram.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result};
use ringcast_tests::{config_file, http_get, poll_until, workspace_root, Client, Server, TIMEOUT};
use serde_json::Value;

/// Every query string of the dashboard: panel targets' `expr`, templating `definition`
/// and `query` (a datasource variable's `query` is a plugin type, not PromQL).
fn queries(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) if map.get("type") == Some(&Value::from("datasource")) => {}
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "definition" | "query", Value::String(s)) => out.push(s.clone()),
                    _ => queries(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// The `ringcast_…` metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("ringcast_") {
        let boundary = at == 0 || {
            let before = rest.as_bytes()[at - 1];
            !(before.is_ascii_alphanumeric() || before == b'_')
        };
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if boundary {
            names.push(tail[..len].to_owned());
        }
        rest = &tail[len..];
    }
    names
}

/// Sample names, histogram families and every family (`# TYPE`) of a scrape.
fn exported(text: &str) -> (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>) {
    let mut samples = BTreeSet::new();
    let mut histograms = BTreeSet::new();
    let mut families = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next(), parts.next());
            if let Some(name) = name {
                families.insert(name.to_owned());
            }
            if let (Some(name), Some("histogram")) = (name, kind) {
                histograms.insert(name.to_owned());
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            samples.insert(line[..end].to_owned());
        }
    }
    (samples, histograms, families)
}

/// Whether `name` (as a query names it) is a series of `family`: the family itself, or
/// it with an OpenMetrics sample suffix (a counter's `_total`, a histogram's parts).
fn is_of_family(name: &str, family: &str) -> bool {
    name == family
        || ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .any(|suffix| name.strip_suffix(suffix) == Some(family))
}

fn is_exported(name: &str, samples: &BTreeSet<String>, histograms: &BTreeSet<String>) -> bool {
    samples.contains(name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| histograms.contains(base))
        })
}

#[test]
fn the_dashboard_and_a_scrape_name_the_same_metrics() -> Result<()> {
    let path = workspace_root().join("tuning/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let mut exprs = Vec::new();
    queries(&dashboard, &mut exprs);
    assert!(exprs.len() > 20, "queries found: {exprs:?}");

    let (_dir, config) = config_file("[metrics]\ntenant_labels = true\n")?;
    let server = Server::start(&["--config", &config.display().to_string()])?;
    let mut client = Client::open(&server, "")?;
    client.subscribe("dash:a")?;
    assert_eq!(http_get(server.addr(), "/healthz")?.status, 200);
    // Requests are counted once answered: wait until the scrape shows one.
    let text = poll_until(TIMEOUT, Duration::from_millis(20), || {
        let text = server.metrics()?;
        Ok(text
            .contains("ringcast_http_requests_total{")
            .then_some(text))
    })?;
    let (samples, histograms, families) = exported(&text);
    assert!(histograms.contains("ringcast_http_request_duration_seconds"));

    let mut missing = Vec::new();
    let mut named = BTreeSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "a query without a ringcast metric: {expr}"
        );
        for name in names {
            if !is_exported(&name, &samples, &histograms) {
                missing.push(format!("{name} (in `{expr}`)"));
            }
            named.insert(name);
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard names metrics the server does not export:\n{}",
        missing.join("\n")
    );
    // Found in review: tuning/README.md called it a dashboard "over every exported
    // metric" while the REN families and several history counters had no panel.
    let unshown: Vec<&String> = families
        .iter()
        .filter(|family| !named.iter().any(|name| is_of_family(name, family)))
        .collect();
    assert!(
        families.len() > 20 && unshown.is_empty(),
        "exported families no dashboard query names: {unshown:?}"
    );
    Ok(())
}

#[test]
fn a_family_owns_its_suffixed_series() {
    assert!(is_of_family(
        "ringcast_ren_events_total",
        "ringcast_ren_events"
    ));
    assert!(is_of_family(
        "ringcast_loop_turn_seconds_bucket",
        "ringcast_loop_turn_seconds"
    ));
    assert!(is_of_family("ringcast_build_info", "ringcast_build_info"));
    assert!(!is_of_family("ringcast_ren_events_total", "ringcast_ren"));
}

#[test]
fn names_are_extracted_from_promql() {
    assert_eq!(
        metric_names(
            "sum(rate(ringcast_a_total{x=\"ringcast_not\"}[5m])) / ringcast_b_bucket + xringcast_c"
        ),
        ["ringcast_a_total", "ringcast_not", "ringcast_b_bucket"]
    );
}
