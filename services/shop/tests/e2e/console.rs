//! The ops console in a real browser: Debian's Chromium, headless, driven over WebDriver
//! (chromedriver) by fantoccini. It loads, signs in, shows every service ready; shows the
//! payments breaker open while payments is stopped and closed once it is back; its replay
//! button drains the dead notifications; its breaker buttons force one open and closed; its
//! restock form restocks.
//!
//! Without `chromedriver` on the machine the test says so and passes, unless
//! `MAINSTAY_REQUIRE_BROWSER` is set (as `.ci/run` sets it, after installing Chromium): then
//! it fails. With `CONSOLE_SCREENSHOT=<path>` it saves a screenshot of the console there (the
//! README's).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use shop::{Options, System};

use super::{ADMIN_PASSWORD, APPROVES, Customer, body, knobs, notifications_of, status_of};

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    /// `None` when there is no chromedriver (and none is required).
    async fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .unwrap();
        let child = match Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(error) => {
                assert!(
                    std::env::var_os("MAINSTAY_REQUIRE_BROWSER").is_none(),
                    "chromedriver is required here: {error}"
                );
                eprintln!(
                    "chromedriver not installed ({error}): skipping the browser test \
                     (apt-get install chromium chromium-driver)"
                );
                return None;
            }
        };
        let driver = Self { child, port };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Some(driver);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not listen on {port}");
    }

    async fn browser(&self) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1440,1500",
                ],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session")
    }
}

/// Waits (at most `seconds`) until `check` holds on the page, with what it last saw.
async fn until<F, Fut>(what: &str, seconds: u64, mut check: F) -> String
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<String>, fantoccini::error::CmdError>>,
{
    let mut last = String::new();
    for _ in 0..seconds * 10 {
        match check().await {
            Ok(Some(seen)) => return seen,
            Ok(None) => {}
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within {seconds} s ({last})");
}

/// The text of the element `css`, if it is there.
async fn text_of(
    browser: &Client,
    css: &str,
) -> Result<Option<String>, fantoccini::error::CmdError> {
    match browser.find(Locator::Css(css)).await {
        Ok(element) => Ok(Some(element.text().await?)),
        Err(error) if error.is_no_such_element() => Ok(None),
        Err(error) => Err(error),
    }
}

/// The state of the breakers in front of `service`, as the console shows them.
async fn breaker_states(
    browser: &Client,
    service: &str,
) -> Result<Vec<String>, fantoccini::error::CmdError> {
    let rows = browser
        .find_all(Locator::Css(&format!("tr[data-breaker='{service}']")))
        .await?;
    let mut states = Vec::new();
    for row in rows {
        states.push(row.attr("data-state").await?.unwrap_or_default());
    }
    Ok(states)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_console_in_a_browser() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("shop-console-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let options = knobs(Options::embedded(&dir).unwrap()).var("CONSOLE_TICK_MS", "300");
    let mut system = System::start(options).await.unwrap();
    let browser = driver.browser().await;

    // It loads, and signs in.
    browser
        .goto(&format!("{}/console", system.url()))
        .await
        .unwrap();
    assert_eq!(browser.title().await.unwrap(), "mainstay · ops console");
    let password = browser.find(Locator::Id("password")).await.unwrap();
    password.send_keys(ADMIN_PASSWORD).await.unwrap();
    browser
        .find(Locator::Id("sign-in-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // Every service ready.
    let services = shop::SERVICES.len();
    until("every service ready", 30, || async {
        let ready = browser
            .find_all(Locator::Css("#services td.ready .pill.up"))
            .await?
            .len();
        Ok((ready == services).then(|| ready.to_string()))
    })
    .await;
    let live = text_of(&browser, "#live").await.unwrap().unwrap();
    assert!(
        live.contains(&format!("{services}/{services} services ready")),
        "{live}"
    );

    // A dead notification: alice's SMS fails, and is dead-lettered.
    let alice = Customer::sign_in(&system).await;
    let admin = Customer::sign_in_as(&system, "admin@example.com", ADMIN_PASSWORD).await;
    let knob = async |failing: bool| {
        let (status, answer) = admin
            .send(
                reqwest::Method::PUT,
                "/api/v1/admin/notifications/channels/sms",
                Some(json!({"failing": failing})),
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::OK, "{answer}");
    };
    knob(true).await;
    alice
        .send(
            reqwest::Method::PUT,
            "/api/v1/notifications/preferences",
            Some(json!({"email": true, "sms": true, "push": true})),
        )
        .await;
    let order = alice
        .order(&body("garden-001", 1, APPROVES, "OX1 1AA"))
        .await;
    assert_eq!(order["status"], "CONFIRMED", "{order}");
    let order_id = order["order_id"].as_str().unwrap().to_owned();
    notifications_of(&alice, &order_id, |n| status_of(n, "sms") == Some("DEAD")).await;
    until("the dead SMS on the console", 30, || async {
        let dead = text_of(&browser, "dd[data-dead-channel='sms']").await?;
        Ok(dead.filter(|count| count == "1"))
    })
    .await;
    // The order, with its steps, among the latest.
    until("the order among the latest", 10, || async {
        let table = text_of(&browser, "#orders").await?.unwrap_or_default();
        Ok(table.contains(&order_id[..8]).then_some(table))
    })
    .await;

    // Payments stopped: the console's calls to it fail and the gateway's breaker opens.
    system
        .stop_service("payments", Duration::from_secs(10))
        .await
        .unwrap();
    let open = until("the payments breaker open", 60, || async {
        let states = breaker_states(&browser, "payments").await?;
        Ok(states
            .iter()
            .any(|state| state == "open")
            .then(|| states.join(",")))
    })
    .await;
    let row = text_of(&browser, "tr[data-service='payments'] td.ready")
        .await
        .unwrap()
        .unwrap();
    assert!(
        row.contains("down"),
        "payments is not ready: {row} ({open})"
    );
    if let Some(path) = std::env::var_os("CONSOLE_SCREENSHOT") {
        std::fs::write(path, browser.screenshot().await.unwrap()).unwrap();
    }

    // Back: after the breaker's open time a probe goes through, and it closes.
    system.start_service("payments").await.unwrap();
    until("the payments breaker closed", 60, || async {
        let states = breaker_states(&browser, "payments").await?;
        Ok(
            (!states.is_empty() && states.iter().all(|state| state == "closed"))
                .then(|| states.join(",")),
        )
    })
    .await;
    until("payments ready again", 30, || async {
        let row = text_of(&browser, "tr[data-service='payments'] td.ready").await?;
        Ok(row.filter(|text| text.contains("up")))
    })
    .await;

    // The replay button drains the dead notifications: sent once more, the count back to 0.
    knob(false).await;
    browser
        .find(Locator::Id("replay-notifications"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let replayed = until("the replay's answer", 10, || async {
        let result = text_of(&browser, "#replay-result").await?;
        Ok(result.filter(|text| !text.is_empty()))
    })
    .await;
    assert_eq!(replayed, "1 queued again");
    notifications_of(&alice, &order_id, |n| status_of(n, "sms") == Some("SENT")).await;
    until("no dead SMS on the console", 30, || async {
        let dead = text_of(&browser, "dd[data-dead-channel='sms']").await?;
        Ok(dead.filter(|count| count == "0"))
    })
    .await;

    // A breaker forced open from the console, and closed again.
    browser
        .find(Locator::Css("button[data-force='catalog:forced_open']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until("the catalog breaker forced open", 10, || async {
        let states = breaker_states(&browser, "catalog").await?;
        Ok(
            (!states.is_empty() && states.iter().all(|s| s == "forced_open"))
                .then(|| states.join(",")),
        )
    })
    .await;
    // A search no cache has answered goes to the catalog, through the breaker.
    let (status, refused): (reqwest::StatusCode, Value) =
        alice.get("/api/v1/products/search?q=forcedopen").await;
    assert_eq!(
        status,
        reqwest::StatusCode::SERVICE_UNAVAILABLE,
        "the gateway refuses calls to a breaker forced open: {refused}"
    );
    browser
        .find(Locator::Css("button[data-force='catalog:closed']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until("the catalog breaker closed", 10, || async {
        let states = breaker_states(&browser, "catalog").await?;
        Ok((!states.is_empty() && states.iter().all(|s| s == "closed")).then(|| states.join(",")))
    })
    .await;

    // Restock from the console: the stock grows by what was asked.
    let (_, before) = alice.get("/api/v1/stock/garden-003").await;
    let before = before["available"].as_i64().unwrap();
    let sku = browser.find(Locator::Id("restock-sku")).await.unwrap();
    sku.send_keys("garden-003").await.unwrap();
    let quantity = browser.find(Locator::Id("restock-quantity")).await.unwrap();
    quantity.clear().await.unwrap();
    quantity.send_keys("7").await.unwrap();
    browser
        .find(Locator::Id("restock-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let restocked = until("the restock's answer", 10, || async {
        let result = text_of(&browser, "#restock-result").await?;
        Ok(result.filter(|text| !text.is_empty()))
    })
    .await;
    assert!(
        restocked.contains(&format!("{} available", before + 7)),
        "{restocked}"
    );
    let (_, after) = alice.get("/api/v1/stock/garden-003").await;
    assert_eq!(after["available"].as_i64().unwrap(), before + 7);

    // A customer's token is not enough.
    let (status, _) = alice.get("/console/api/state").await;
    assert_eq!(status, reqwest::StatusCode::FORBIDDEN);

    browser.close().await.unwrap();
    system.stop(Duration::from_secs(10)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
