//! Runs through the HTTP API, served in-process on an ephemeral port against the simulated
//! bench: start, follow the events (with a reconnect), detail, export, abort, confirm, lock
//! contention and queueing, and every kind of bad input as problem+json.

mod api_common;

use std::time::Duration;

use api_common::*;

const LM79: &str =
    r#"{"recipe":"lm79-led-lamp","station":"demo","dut":"SN-API-1","operator":"ada"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lm79_run_events_reconnect_detail_and_export() {
    let s = serve_runs().await;
    let id = start_run(s.addr, LM79).await;
    let events = format!("/api/v1/runs/{id}/events");

    // Read a few events, drop the connection, resume with Last-Event-ID.
    let mut first = SseStream::open(s.addr, &events, None).await;
    assert_eq!(first.status, 200);
    assert!(first.content_type.starts_with("text/event-stream"));
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(first.next().await.expect("an event"));
    }
    drop(first);
    let last = seen.last().unwrap().id.unwrap();
    let mut again = SseStream::open(s.addr, &events, Some(last)).await;
    seen.extend(again.rest().await);

    let ids: Vec<i64> = seen.iter().map(|e| e.id.unwrap()).collect();
    let expected: Vec<i64> = (1..=ids.len() as i64).collect();
    assert_eq!(ids, expected, "gapless, no duplicates");
    assert_eq!(seen[0].event, "run_started");
    let verdict = seen.last().unwrap();
    assert_eq!(verdict.event, "verdict");
    assert_eq!(verdict.data["payload"]["verdict"], "pass", "{verdict:?}");
    for kind in [
        "step_started",
        "step_finished",
        "measurement",
        "stabilizing",
    ] {
        assert!(seen.iter().any(|e| e.event == kind), "no {kind} event");
    }
    let flux = seen
        .iter()
        .find(|e| e.event == "measurement" && e.data["payload"]["name"] == "flux")
        .expect("flux measured");
    assert_eq!(flux.data["payload"]["verdict"], "pass");
    assert_eq!(flux.data["run"], id);

    // A stream of a finished run replays and ends; ?after= works like Last-Event-ID.
    let tail = SseStream::open(s.addr, &format!("{events}?after={}", ids.len() - 1), None)
        .await
        .rest()
        .await;
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].event, "verdict");

    let d = finished(s.addr, id).await;
    assert_eq!(d["run"]["verdict"], "pass");
    assert_eq!(d["run"]["dut_serial"], "SN-API-1");
    assert_eq!(d["run"]["operator"], "ada");
    assert!(d["steps"].as_array().unwrap().len() >= 9, "{d}");
    let names: Vec<&str> = d["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    for n in ["voltage", "power", "flux", "cct", "efficacy"] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }

    let csv = get(s.addr, &format!("/api/v1/runs/{id}/export?format=csv")).await;
    assert_eq!(csv.status, 200);
    assert!(csv.header("content-type").unwrap().starts_with("text/csv"));
    let mut lines = csv.body.lines();
    assert!(lines.next().unwrap().starts_with("run_id,"));
    assert!(
        csv.body.lines().any(|l| l.contains(",flux,")),
        "{}",
        csv.body
    );
    let json = get(s.addr, &format!("/api/v1/runs/{id}/export?format=json")).await;
    assert_eq!(json.status, 200);
    assert_eq!(json.json()["run"]["id"], id);

    // Listed, filterable, paged.
    let start_second = start_run(
        s.addr,
        r#"{"recipe":"lm79-led-lamp","station":"demo","dut":"SN-API-2","params":{"rated_flux":2000}}"#,
    )
    .await;
    let d2 = finished(s.addr, start_second).await;
    assert_eq!(d2["run"]["verdict"], "fail");
    let all = get(s.addr, "/api/v1/runs?limit=1").await.json();
    assert_eq!(all["items"].as_array().unwrap().len(), 1);
    assert_eq!(all["items"][0]["id"], start_second, "newest first");
    let cursor = all["next_cursor"].as_str().expect("a second page");
    let page2 = get(s.addr, &format!("/api/v1/runs?limit=1&cursor={cursor}"))
        .await
        .json();
    assert_eq!(page2["items"][0]["id"], id);
    let by_dut = get(s.addr, "/api/v1/runs?dut=SN-API-1").await.json();
    assert_eq!(by_dut["items"].as_array().unwrap().len(), 1);
    let failed = get(
        s.addr,
        "/api/v1/runs?verdict=fail&recipe=lm79-led-lamp&station=demo",
    )
    .await
    .json();
    assert_eq!(failed["items"][0]["id"], start_second);
    assert_eq!(failed["items"].as_array().unwrap().len(), 1);
    let future = get(s.addr, "/api/v1/runs?from=2999-01-01T00:00:00Z")
        .await
        .json();
    assert!(future["items"].as_array().unwrap().is_empty());
    let window = get(
        s.addr,
        "/api/v1/runs?from=2000-01-01T00:00:00Z&to=2999-01-01T00:00:00Z",
    )
    .await
    .json();
    assert_eq!(window["items"].as_array().unwrap().len(), 2);

    // Metrics: the run counters by recipe and verdict, and the step histograms.
    let m = get(s.addr, "/metrics").await.body;
    assert!(
        m.contains(r#"labgate_runs_total{recipe="lm79-led-lamp",verdict="pass"} 1"#),
        "{m}"
    );
    assert!(m.contains(r#"labgate_runs_total{recipe="lm79-led-lamp",verdict="fail"} 1"#));
    assert!(
        m.contains(r#"labgate_step_duration_seconds_bucket{recipe="lm79-led-lamp",kind="act""#)
    );
    assert!(m.contains(r#"labgate_stabilization_duration_seconds_count{recipe="lm79-led-lamp"}"#));
    assert!(m.contains(r#"labgate_runs_active{state="running"} 0"#));
    assert!(!m.contains("SN-API"), "no serials in labels");
    promtool_ok(&m);
}

/// promtool's parser and lint accept the exposition with the run series in it (skipped when
/// promtool is not installed; .ci/run installs it).
fn promtool_ok(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not installed; exposition not linted");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_runs_cleanup_and_locks_name_the_holder() {
    let s = serve_runs().await;
    let id = start_run(
        s.addr,
        r#"{"recipe":"slow","station":"demo","dut":"SN-SLOW"}"#,
    )
    .await;
    eventually("the lamp on", || async {
        s.sim.plant.output_on().then_some(())
    })
    .await;
    let active = get(s.addr, &format!("/api/v1/runs/{id}")).await.json();
    assert_eq!(active["active"], true);
    assert!(active["run"]["verdict"].is_null());

    // The instruments are held: a second run is refused naming the holder...
    let r = post_json(
        s.addr,
        "/api/v1/runs",
        r#"{"recipe":"ask","station":"demo","dut":"SN-2"}"#,
    )
    .await;
    let detail = r.problem(409);
    assert!(
        detail.contains("instrument `pa1` is in use by recipe `slow` for DUT SN-SLOW"),
        "{detail}"
    );
    // ...or waits in line when it asks to.
    let q = post_json(
        s.addr,
        "/api/v1/runs",
        r#"{"recipe":"slow","station":"demo","dut":"SN-3","queue":true}"#,
    )
    .await;
    assert_eq!(q.status, 202, "{}", q.body);
    let ticket = q.json()["ticket"].as_u64().unwrap();
    // A second one in line, withdrawn.
    let q2 = post_json(
        s.addr,
        "/api/v1/runs",
        r#"{"recipe":"ask","station":"demo","dut":"SN-4","queue":true}"#,
    )
    .await;
    assert_eq!(q2.status, 202, "{}", q2.body);
    let t2 = q2.json()["ticket"].as_u64().unwrap();
    let c = post_json(s.addr, &format!("/api/v1/queue/{t2}/cancel"), "").await;
    assert_eq!(c.status, 202);
    eventually("the withdrawn request to leave the queue", || async {
        let q = get(s.addr, "/api/v1/queue").await.json();
        (q.as_array().unwrap().len() == 1).then_some(())
    })
    .await;
    let queue = get(s.addr, "/api/v1/queue").await.json();
    assert_eq!(queue[0]["ticket"], ticket);
    assert_eq!(queue[0]["recipe"], "slow");

    let m = get(s.addr, "/metrics").await.body;
    assert!(
        m.contains(r#"labgate_runs_active{state="running"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"labgate_runs_active{state="queued"} 1"#),
        "{m}"
    );

    let a = post_json(s.addr, &format!("/api/v1/runs/{id}/abort"), "").await;
    assert_eq!(a.status, 202, "{}", a.body);
    let d = finished(s.addr, id).await;
    assert_eq!(d["run"]["verdict"], "aborted");
    let steps = d["steps"].as_array().unwrap();
    let off = steps
        .iter()
        .find(|x| x["name"] == "lamp off")
        .expect("cleanup ran");
    assert_eq!(off["status"], "pass", "{off}");
    let again = post_json(s.addr, &format!("/api/v1/runs/{id}/abort"), "").await;
    assert!(again.problem(409).contains("finished (aborted)"));

    // The queued request got the instruments and was filed; withdraw it by aborting.
    let second = eventually("the queued run to start", || async {
        let l = get(s.addr, "/api/v1/runs?dut=SN-3").await.json();
        l["items"][0]["id"].as_i64()
    })
    .await;
    assert!(
        get(s.addr, "/api/v1/queue")
            .await
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );
    let never = get(s.addr, "/api/v1/runs?dut=SN-4").await.json();
    assert!(
        never["items"].as_array().unwrap().is_empty(),
        "withdrawn: never filed"
    );
    eventually("the queued run to hold the lamp on", || async {
        s.sim.plant.output_on().then_some(())
    })
    .await;
    let a = post_json(s.addr, &format!("/api/v1/runs/{second}/abort"), "").await;
    assert_eq!(a.status, 202);
    assert_eq!(finished(s.addr, second).await["run"]["verdict"], "aborted");
    assert!(!s.sim.plant.output_on(), "cleanup switched the source off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_is_shown_and_answered() {
    let s = serve_runs().await;
    let id = start_run(
        s.addr,
        r#"{"recipe":"ask","station":"demo","dut":"SN-ASK"}"#,
    )
    .await;
    let none = post_json(
        s.addr,
        &format!("/api/v1/runs/{}/confirm", id + 100),
        r#"{"ok":true}"#,
    )
    .await;
    none.problem(404);
    let p = eventually("the prompt", || async {
        let p = get(s.addr, &format!("/api/v1/runs/{id}/prompt"))
            .await
            .json();
        (p["pending"] == true).then_some(p)
    })
    .await;
    assert_eq!(p["prompt"], "insert lamp 2");
    assert_eq!(p["step"], "insert lamp");
    let bad = post_json(
        s.addr,
        &format!("/api/v1/runs/{id}/confirm"),
        r#"{"ok":"yes"}"#,
    )
    .await;
    bad.problem(422);
    let r = post_json(
        s.addr,
        &format!("/api/v1/runs/{id}/confirm"),
        r#"{"ok":true}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["prompt"], "insert lamp 2");
    let d = finished(s.addr, id).await;
    assert_eq!(d["run"]["verdict"], "pass", "{d}");
    // The stream shows the prompt as its own event.
    let ev = SseStream::open(s.addr, &format!("/api/v1/runs/{id}/events"), None)
        .await
        .rest()
        .await;
    assert!(
        ev.iter()
            .any(|e| e.event == "prompt" && e.data["payload"]["prompt"] == "insert lamp 2")
    );
    let late = post_json(
        s.addr,
        &format!("/api/v1/runs/{id}/confirm"),
        r#"{"ok":true}"#,
    )
    .await;
    late.problem(409);
    let p = get(s.addr, &format!("/api/v1/runs/{id}/prompt"))
        .await
        .json();
    assert_eq!(p["pending"], false);

    // Declined: the confirm step fails, so the run fails.
    let id = start_run(s.addr, r#"{"recipe":"ask","station":"demo","dut":"SN-NO"}"#).await;
    eventually("the second prompt", || async {
        let p = get(s.addr, &format!("/api/v1/runs/{id}/prompt"))
            .await
            .json();
        (p["pending"] == true).then_some(())
    })
    .await;
    let r = post_json(
        s.addr,
        &format!("/api/v1/runs/{id}/confirm"),
        r#"{"ok":false}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(finished(s.addr, id).await["run"]["verdict"], "fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipes_are_listed_shown_and_validated() {
    let s = serve_runs().await;
    let list = get(s.addr, "/api/v1/recipes").await.json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ask", "lm79-led-lamp", "slow"]);
    let one = get(s.addr, "/api/v1/recipes/lm79-led-lamp").await.json();
    assert_eq!(one["title"], "lm79-led-lamp");
    assert!(one["source"].as_str().unwrap().contains("[recipe]"));
    assert_eq!(one["parameters"]["rated_voltage"]["unit"], "V");
    assert_eq!(one["steps"][3]["kind"], "stabilize");
    assert_eq!(one["cleanup"][0]["name"], "lamp off");
    get(s.addr, "/api/v1/recipes/nope").await.problem(404);
    get(s.addr, "/api/v1/recipes/..%2F..%2Fetc%2Fpasswd")
        .await
        .problem(400);
    get(s.addr, "/api/v1/recipes/.hidden").await.problem(400);

    let ok = http(
        s.addr,
        "POST",
        "/api/v1/recipes/validate",
        &[("Content-Type", "application/toml")],
        SLOW_RECIPE.as_bytes(),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["stations"][0], "demo");
    let broken = SLOW_RECIPE
        .replace(
            "action = \"output\"\nargs = { on = true }",
            "action = \"outptu\"\nargs = { on = true }",
        )
        .replace("quantities = [\"power\"]", "quantities = [\"powr\"]")
        .replace("duration = \"120s\"", "duration = \"120s\"\nsamplez = 3");
    let bad = http(
        s.addr,
        "POST",
        "/api/v1/recipes/validate",
        &[("Content-Type", "application/toml")],
        broken.as_bytes(),
    )
    .await;
    bad.problem(422);
    let problems = bad.json()["problems"].as_array().unwrap().clone();
    assert!(problems.len() >= 3, "every problem: {problems:?}");
    for p in &problems {
        assert_eq!(p["file"], "upload.toml");
        assert!(p["line"].as_u64().unwrap() > 1 && p["col"].as_u64().unwrap() >= 1);
    }
    let text: String = problems.iter().map(|p| p["message"].to_string()).collect();
    assert!(
        text.contains("outptu") && text.contains("powr") && text.contains("samplez"),
        "{text}"
    );
    let junk = http(
        s.addr,
        "POST",
        "/api/v1/recipes/validate",
        &[],
        b"[recipe\nname=",
    )
    .await;
    assert!(!junk.json()["problems"].as_array().unwrap().is_empty());
    junk.problem(422);
    let bin = http(
        s.addr,
        "POST",
        "/api/v1/recipes/validate",
        &[],
        &[0xff, 0xfe, 0x00],
    )
    .await;
    bin.problem(400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_problem_never_a_500() {
    let s = serve_runs().await;
    let post = |body: &'static str| post_json(s.addr, "/api/v1/runs", body);
    post("{not json").await.problem(400);
    post(r#"{"recipe":"slow"}"#).await.problem(422);
    post(r#"{"recipe":"slow","station":"demo","dut":"x","colour":"red"}"#)
        .await
        .problem(422);
    let d = post(r#"{"recipe":"../slow","station":"demo","dut":"x"}"#)
        .await
        .problem(422);
    assert!(d.contains("not a recipe name"), "{d}");
    let d = post(r#"{"recipe":"nope","station":"demo","dut":"x"}"#)
        .await
        .problem(422);
    assert!(d.contains("known: ask, lm79-led-lamp, slow"), "{d}");
    let d = post(r#"{"recipe":"slow","station":"lab9","dut":"x"}"#)
        .await
        .problem(422);
    assert!(d.contains("no station `lab9`"), "{d}");
    post(r#"{"recipe":"slow","station":"demo","dut":""}"#)
        .await
        .problem(422);
    let r = post(r#"{"recipe":"lm79-led-lamp","station":"demo","dut":"x","params":{"rated_voltage":999,"rated_volts":1}}"#).await;
    let d = r.problem(422);
    assert!(d.contains("does not validate"), "{d}");
    let problems = r.json()["problems"].as_array().unwrap().clone();
    assert_eq!(problems.len(), 2, "{problems:?}");
    post(r#"{"recipe":"slow","station":"demo","dut":"x","params":{"a":[1]}}"#)
        .await
        .problem(422);
    let big = format!(
        r#"{{"recipe":"slow","station":"demo","dut":"{}"}}"#,
        "x".repeat(labgate::api::BODY_LIMIT)
    );
    post_json(s.addr, "/api/v1/runs", &big).await.problem(413);

    for path in [
        "/api/v1/runs/9999",
        "/api/v1/runs/9999/events",
        "/api/v1/runs/9999/export?format=csv",
        "/api/v1/runs/9999/prompt",
    ] {
        get(s.addr, path).await.problem(404);
    }
    post_json(s.addr, "/api/v1/runs/9999/abort", "")
        .await
        .problem(404);
    post_json(s.addr, "/api/v1/queue/77/cancel", "")
        .await
        .problem(404);
    get(s.addr, "/api/v1/runs/abc").await.problem(400);
    get(s.addr, "/api/v1/runs?verdict=great").await.problem(400);
    get(s.addr, "/api/v1/runs?from=yesterday")
        .await
        .problem(400);
    get(s.addr, "/api/v1/runs?cursor=zzz").await.problem(400);
    get(s.addr, "/api/v1/runs?limit=-1").await.problem(400);
    let id = start_run(s.addr, r#"{"recipe":"ask","station":"demo","dut":"SN-X"}"#).await;
    get(s.addr, &format!("/api/v1/runs/{id}/export?format=xml"))
        .await
        .problem(422);
    let r = http(
        s.addr,
        "GET",
        &format!("/api/v1/runs/{id}/events"),
        &[("Last-Event-ID", "latest")],
        b"",
    )
    .await;
    r.problem(400);
    post_json(s.addr, &format!("/api/v1/runs/{id}/confirm"), "{")
        .await
        .problem(400);
    let a = post_json(s.addr, &format!("/api/v1/runs/{id}/abort"), "").await;
    assert_eq!(a.status, 202);
    assert_eq!(finished(s.addr, id).await["run"]["verdict"], "aborted");

    // The OpenAPI document covers the new endpoints.
    let doc = get(s.addr, "/api/v1/openapi.json").await.json();
    for p in [
        "/api/v1/runs",
        "/api/v1/runs/{id}",
        "/api/v1/runs/{id}/events",
        "/api/v1/runs/{id}/abort",
        "/api/v1/runs/{id}/confirm",
        "/api/v1/runs/{id}/prompt",
        "/api/v1/runs/{id}/export",
        "/api/v1/recipes",
        "/api/v1/recipes/{name}",
        "/api/v1/recipes/validate",
    ] {
        assert!(doc["paths"][p].is_object(), "{p} documented");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_runs_and_aborts_running_ones() {
    let s = serve_runs().await;
    let id = start_run(s.addr, r#"{"recipe":"slow","station":"demo","dut":"SN-T"}"#).await;
    eventually("the lamp on", || async {
        s.sim.plant.output_on().then_some(())
    })
    .await;
    let left = s.state.runs().shutdown(Duration::from_secs(10)).await;
    assert_eq!(left, 0);
    assert!(
        !s.sim.plant.output_on(),
        "cleanup ran before shutdown returned"
    );
    let d = get(s.addr, &format!("/api/v1/runs/{id}")).await.json();
    assert_eq!(d["run"]["verdict"], "aborted");
    let r = post_json(
        s.addr,
        "/api/v1/runs",
        r#"{"recipe":"slow","station":"demo","dut":"SN-U"}"#,
    )
    .await;
    r.problem(503);
}

/// The poll's latest `power` reading of pa1, as (time, value), from the instrument detail.
async fn polled_power(addr: std::net::SocketAddr) -> Option<(String, f64)> {
    let d = get(addr, "/api/v1/instruments/pa1").await.json();
    let r = d["readings"]
        .as_array()?
        .iter()
        .find(|r| r["quantity"] == "power")?;
    Some((r["at"].as_str()?.to_string(), r["value"].as_f64()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_polls_keep_going_while_a_run_holds_the_instrument() {
    let s = serve_runs().await;
    let id = start_run(
        s.addr,
        r#"{"recipe":"slow","station":"demo","dut":"SN-POLL"}"#,
    )
    .await;
    // The run switched the lamp on and now soaks for two minutes, holding pa1.
    eventually("the lamp on", || async {
        s.sim.plant.output_on().then_some(())
    })
    .await;
    let (first_at, _) = eventually("a polled reading", || polled_power(s.addr)).await;
    // The demo polls pa1 every second: two newer readings arrive while the run still holds the
    // analyzer.
    let mut seen = vec![first_at];
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut watts = 0.0;
    while seen.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "polls stopped during the run: {seen:?}"
        );
        if let Some((at, w)) = polled_power(s.addr).await
            && seen.last() != Some(&at)
        {
            seen.push(at);
            watts = w;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        watts.is_finite(),
        "a number, not an invalid marker: {watts}"
    );
    let d = get(s.addr, &format!("/api/v1/runs/{id}")).await.json();
    assert_eq!(
        d["active"], true,
        "the run still holds the instruments: {d}"
    );

    let r = post_json(s.addr, &format!("/api/v1/runs/{id}/abort"), "").await;
    assert_eq!(r.status, 202);
    let d = finished(s.addr, id).await;
    assert_eq!(d["run"]["verdict"], "aborted");
}
