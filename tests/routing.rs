//! Routing end to end: precedence, methods, strip_prefix, query strings, 404/405 bodies.

mod common;

use common::{USERS, client, demo, error_body, gateway};
use serde_json::Value;

async fn echo(resp: reqwest::Response) -> Value {
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn the_most_specific_route_wins_regardless_of_file_order() {
    let a = demo(USERS).await;
    let b = demo(gateway::demo::backends::DemoService::Orders).await;
    let gw = gateway(&format!(
        r#"
[services.general]
urls = ["{a}"]
[services.specific]
urls = ["{b}"]

[[routes]]
prefix = "/"
service = "general"
auth = "none"

[[routes]]
prefix = "/echo/special"
service = "specific"
auth = "none"

[[routes]]
path = "/echo/items/{{id}}/detail"
service = "specific"
auth = "none"
"#,
        a = a.url(),
        b = b.url()
    ))
    .await;
    let c = client();
    let served_by = |path: &'static str| {
        let c = c.clone();
        let url = format!("{}{path}", gw.url());
        async move {
            echo(c.get(url).send().await.unwrap()).await["service"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(served_by("/echo/special").await, "orders");
    assert_eq!(served_by("/echo/special/deeper/still").await, "orders");
    assert_eq!(
        served_by("/echo/specialx").await,
        "users",
        "a prefix matches whole segments only"
    );
    assert_eq!(served_by("/echo/items/7/detail").await, "orders");
    assert_eq!(served_by("/echo/items/7/other").await, "users");
    assert_eq!(served_by("/echo").await, "users");
}

#[tokio::test]
async fn methods_are_filtered_with_405_and_allow_and_fall_through_to_broader_routes() {
    let users = demo(USERS).await;
    let gw = gateway(&format!(
        r#"
[services.svc]
urls = ["{u}"]

[[routes]]
path = "/echo/{{id}}"
methods = ["GET", "PUT"]
service = "svc"
auth = "none"

[[routes]]
prefix = "/echo/open"
service = "svc"
auth = "none"
"#,
        u = users.url()
    ))
    .await;
    let c = client();
    let r = c.delete(format!("{}/echo/42", gw.url())).send().await.unwrap();
    let allow = r.headers()["allow"].to_str().unwrap().to_owned();
    assert_eq!(allow, "GET, HEAD, PUT");
    let body = error_body(r, 405, "METHOD_NOT_ALLOWED").await;
    assert_eq!(body["error"]["message"], "DELETE is not allowed on /echo/42");

    let r = c
        .put(format!("{}/echo/42", gw.url()))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(echo(r).await["method"], "PUT");
    let r = c.head(format!("{}/echo/42", gw.url())).send().await.unwrap();
    assert_eq!(r.status(), 200, "GET routes serve HEAD");
    // /echo/open matches the GET/PUT pattern too, but DELETE falls through to the prefix route.
    let r = c.delete(format!("{}/echo/open", gw.url())).send().await.unwrap();
    assert_eq!(echo(r).await["method"], "DELETE");
}

#[tokio::test]
async fn unknown_paths_get_the_spec_404_body() {
    let users = demo(USERS).await;
    let gw = gateway(&format!(
        "[services.svc]\nurls = [\"{}\"]\n[[routes]]\nprefix = \"/api\"\nservice = \"svc\"\nauth = \"none\"\n",
        users.url()
    ))
    .await;
    let r = client()
        .get(format!("{}/nope?x=1", gw.url()))
        .send()
        .await
        .unwrap();
    let body = error_body(r, 404, "ROUTE_NOT_FOUND").await;
    assert_eq!(body["error"]["message"], "no route for GET /nope");
}

#[tokio::test]
async fn strip_prefix_and_base_paths_compose_and_queries_pass_untouched() {
    let users = demo(USERS).await;
    let gw = gateway(&format!(
        r#"
[services.stripped]
urls = ["{u}/echo/base/"]
[services.kept]
urls = ["{u}"]

[[routes]]
prefix = "/api/v1"
service = "stripped"
strip_prefix = true
auth = "none"

[[routes]]
prefix = "/echo"
service = "kept"
auth = "none"
"#,
        u = users.url()
    ))
    .await;
    let c = client();
    let got = echo(
        c.get(format!("{}/api/v1/users/7?b=2&a=1&a=%20x&empty=", gw.url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got["path"], "/echo/base/users/7");
    assert_eq!(got["query"], "b=2&a=1&a=%20x&empty=");
    let got = echo(c.get(format!("{}/api/v1", gw.url())).send().await.unwrap()).await;
    assert_eq!(got["path"], "/echo/base");
    let got = echo(
        c.get(format!("{}/echo/x/y?q=%2F", gw.url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got["path"], "/echo/x/y");
    assert_eq!(got["query"], "q=%2F", "encoded slashes in the query are fine");
}

#[tokio::test]
async fn http2_prior_knowledge_clients_are_served() {
    let users = demo(USERS).await;
    let gw = gateway(&common::one_route(&users.url(), "")).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .build()
        .unwrap();
    let r = h2
        .post(format!("{}/echo/h2", gw.url()))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let got = echo(r).await;
    assert_eq!(got["body"], "hello");
    assert_eq!(got["path"], "/echo/h2");
    // The upstream gets the client's authority as X-Forwarded-Host, not its own.
    assert_eq!(got["headers"]["x-forwarded-host"][0], gw.addr.to_string());
}
