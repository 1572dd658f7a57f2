//! The HTTP API in-process against an ephemeral simulator bench, over real loopback TCP.

mod api_common;

use api_common::*;

const TOKEN: &str = "0123456789abcdef-test-token";

#[tokio::test]
async fn health_ready_instruments_stations() {
    let s = serve("").await;
    let h = get(s.addr, "/api/v1/health").await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");

    // Ready once every link has connected to the simulators.
    let ready = eventually("ready", || async {
        let r = get(s.addr, "/api/v1/ready").await;
        (r.status == 200).then(|| r.json())
    })
    .await;
    assert_eq!(ready["store"], true);
    assert_eq!(ready["links"]["pa_link"], "connected");

    let list = get(s.addr, "/api/v1/instruments").await.json();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "chamber1", "ctrl1", "pa1", "rack1", "sphere1", "src1", "tc1"
        ]
    );

    let d = get(s.addr, "/api/v1/instruments/pa1").await.json();
    assert_eq!(d["driver"], "yokogawa-wt310e");
    assert_eq!(d["link"]["state"], "connected");
    assert!(
        d["link"]["identity"].as_str().unwrap().contains("WT310E"),
        "{d}"
    );
    assert!(d["actions"].as_array().unwrap().contains(&"reset".into()));

    // The poll (1 s) fills the latest readings, with units and timestamps.
    let readings = eventually("polled readings", || async {
        let d = get(s.addr, "/api/v1/instruments/pa1").await.json();
        let r = d["readings"].as_array().cloned().unwrap_or_default();
        (r.len() == 3).then_some(r)
    })
    .await;
    let v = readings
        .iter()
        .find(|r| r["quantity"] == "voltage")
        .unwrap();
    assert_eq!(v["unit"], "V");
    assert!(v["at"].as_str().unwrap().ends_with('Z'), "{v}");

    let st = get(s.addr, "/api/v1/stations").await.json();
    assert_eq!(st[0]["id"], "demo");
    assert_eq!(st[0]["roles"]["analyzer"], "pa1");
}

#[tokio::test]
async fn read_and_act_reach_the_instruments() {
    let s = serve("").await;
    let r = post_json(
        s.addr,
        "/api/v1/instruments/src1/actions/output",
        r#"{"args": {"on": true}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(s.sim.plant.output_on());
    let r = post_json(
        s.addr,
        "/api/v1/instruments/src1/actions/set_voltage",
        r#"{"args": {"volts": 230}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    let v = eventually("voltage on the analyzer", || async {
        let r = post_json(
            s.addr,
            "/api/v1/instruments/pa1/read",
            r#"{"quantities": ["voltage", "power"]}"#,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json()["readings"][0]["value"].as_f64()?;
        (v > 200.0).then_some(v)
    })
    .await;
    assert!((v - 230.0).abs() < 5.0, "{v}");

    // Modbus instruments too.
    let r = post_json(
        s.addr,
        "/api/v1/instruments/chamber1/read",
        r#"{"quantities": ["temperature"]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["readings"][0]["unit"], "degC");

    // A triggered measurement: the sphere's spectrum with the lamp lit.
    let r = post_json(
        s.addr,
        "/api/v1/instruments/sphere1/measurements/spectrum",
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let readings = r.json()["readings"].as_array().unwrap().clone();
    assert!(readings.iter().any(|r| r["unit"] == "lm"), "{readings:?}");
    post_json(s.addr, "/api/v1/instruments/sphere1/measurements/nope", "")
        .await
        .problem(404);

    // Off again.
    let r = post_json(
        s.addr,
        "/api/v1/instruments/src1/actions/output",
        r#"{"args": {"on": false}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!s.sim.plant.output_on());
}

#[tokio::test]
async fn bad_input_is_a_problem_4xx() {
    let s = serve("").await;
    let a = s.addr;
    let d = get(a, "/api/v1/instruments/nope").await.problem(404);
    assert!(d.contains("nope") && d.contains("pa1"), "{d}");
    get(a, "/api/v1/nothing-here").await.problem(404);
    // A path segment that is not UTF-8: axum's rejection, reshaped as a problem.
    get(a, "/api/v1/instruments/%FF").await.problem(400);
    get(a, "/api/v1/instruments/pa1/read").await.problem(405);
    post_json(
        a,
        "/api/v1/instruments/nope/read",
        r#"{"quantities":["voltage"]}"#,
    )
    .await
    .problem(404);
    // Malformed JSON: 400; well-formed but wrong shape: 422.
    post_json(a, "/api/v1/instruments/pa1/read", r#"{"quantities": ["#)
        .await
        .problem(400);
    post_json(a, "/api/v1/instruments/pa1/read", r#"{"quantities": 3}"#)
        .await
        .problem(422);
    post_json(
        a,
        "/api/v1/instruments/pa1/read",
        r#"{"quantity": ["voltage"]}"#,
    )
    .await
    .problem(422);
    post_json(a, "/api/v1/instruments/pa1/read", r#"{"quantities": []}"#)
        .await
        .problem(422);
    let d = post_json(
        a,
        "/api/v1/instruments/pa1/read",
        r#"{"quantities": ["voltag"]}"#,
    )
    .await
    .problem(422);
    assert!(d.contains("voltag"), "{d}");
    // Actions: unknown name 404, bad argument type or range 422, null 422.
    post_json(a, "/api/v1/instruments/src1/actions/explode", "{}")
        .await
        .problem(404);
    let d = post_json(
        a,
        "/api/v1/instruments/src1/actions/set_voltage",
        r#"{"args": {"volts": "lots"}}"#,
    )
    .await
    .problem(422);
    assert!(d.contains("volts"), "{d}");
    post_json(
        a,
        "/api/v1/instruments/src1/actions/set_voltage",
        r#"{"args": {"volts": 100000}}"#,
    )
    .await
    .problem(422);
    post_json(
        a,
        "/api/v1/instruments/src1/actions/set_voltage",
        r#"{"args": {"volts": null}}"#,
    )
    .await
    .problem(422);
    // Oversized body: 413, and the server keeps serving.
    let big = format!(
        r#"{{"quantities": ["{}"]}}"#,
        "x".repeat(labgate::api::BODY_LIMIT + 10)
    );
    post_json(a, "/api/v1/instruments/pa1/read", &big)
        .await
        .problem(413);
    assert_eq!(get(a, "/api/v1/health").await.status, 200);
    // Raw passthrough is off by default.
    post_json(a, "/api/v1/instruments/pa1/scpi", r#"{"command": "*IDN?"}"#)
        .await
        .problem(403);
    post_json(
        a,
        "/api/v1/instruments/chamber1/modbus",
        r#"{"op": "read", "table": "holding", "address": 2730, "count": 1}"#,
    )
    .await
    .problem(403);
}

#[tokio::test]
async fn token_guards_mutating_endpoints() {
    let s = serve(&format!("[api]\ntoken = \"{TOKEN}\"\nallow_raw = true\n")).await;
    let a = s.addr;
    let path = "/api/v1/instruments/pa1/scpi";
    let body = br#"{"command": "*IDN?"}"#;
    let ct = ("Content-Type", "application/json");
    let r = http(a, "POST", path, &[ct], body).await;
    r.problem(401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let wrong = format!("Bearer {TOKEN}x");
    http(a, "POST", path, &[ct, ("Authorization", &wrong)], body)
        .await
        .problem(401);
    let right = format!("Bearer {TOKEN}");
    let r = eventually("raw scpi through the link", || async {
        let r = http(a, "POST", path, &[ct, ("Authorization", &right)], body).await;
        (r.status == 200).then_some(r)
    })
    .await;
    assert!(
        r.json()["reply"].as_str().unwrap().contains("WT310E"),
        "{}",
        r.body
    );
    // Raw Modbus: the chamber's mode register, as the driver's `mode` quantity reads it.
    let mode = eventually("chamber link up", || async {
        let r = post_json_auth(
            a,
            "/api/v1/instruments/chamber1/read",
            r#"{"quantities":["mode"]}"#,
            &right,
        )
        .await;
        (r.status == 200).then_some(r)
    })
    .await;
    let mode = mode.json()["readings"][0]["value"].as_f64().unwrap();
    let r = post_json_auth(
        a,
        "/api/v1/instruments/chamber1/modbus",
        r#"{"op": "read", "table": "holding", "address": 2730, "count": 1}"#,
        &right,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["words"][0].as_f64(), Some(mode));
    post_json_auth(
        a,
        "/api/v1/instruments/chamber1/modbus",
        r#"{"op": "read", "table": "holding", "address": 2730, "count": 0}"#,
        &right,
    )
    .await
    .problem(422);
    post_json_auth(
        a,
        "/api/v1/instruments/chamber1/modbus",
        r#"{"op": "explode"}"#,
        &right,
    )
    .await
    .problem(422);
    // Reads of state stay open.
    assert_eq!(get(a, "/api/v1/instruments").await.status, 200);
}

async fn post_json_auth(a: std::net::SocketAddr, path: &str, body: &str, auth: &str) -> Resp {
    http(
        a,
        "POST",
        path,
        &[
            ("Content-Type", "application/json"),
            ("Authorization", auth),
        ],
        body.as_bytes(),
    )
    .await
}

#[tokio::test]
async fn openapi_document_describes_the_routes() {
    let s = serve("").await;
    let r = get(s.addr, "/api/v1/openapi.json").await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/api/v1/health",
        "/api/v1/ready",
        "/api/v1/instruments",
        "/api/v1/instruments/{id}",
        "/api/v1/instruments/{id}/read",
        "/api/v1/instruments/{id}/actions/{action}",
        "/api/v1/instruments/{id}/measurements/{name}",
        "/api/v1/instruments/{id}/modbus",
        "/api/v1/stations",
    ] {
        assert!(doc["paths"].get(p).is_some(), "missing {p}");
    }
    assert!(doc["components"]["schemas"].get("Problem").is_some());
}

#[tokio::test]
async fn ready_is_503_json_while_a_link_is_down() {
    let s = serve("").await;
    let addr = s.addr;
    // Replace the config with one whose chamber link points at a closed port.
    let dir = tempfile::tempdir().unwrap();
    let text = demo_config_text(&s.sim, dir.path(), "")
        .replace(&format!("port = {}", s.sim.modbus.port()), "port = 1");
    s.state
        .replace(labgate::daemon::Live::start(load_text(dir.path(), &text)));
    let body = eventually("a down link", || async {
        let r = get(addr, "/api/v1/ready").await;
        (r.status == 503 && r.json()["links"]["pa_link"] == "connected").then_some(r)
    })
    .await;
    assert!(
        body.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let j = body.json();
    assert_eq!(j["ready"], false);
    assert_ne!(j["links"]["plc_link"], "connected");
}
