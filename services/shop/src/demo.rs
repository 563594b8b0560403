//! `shop demo`: a scripted walk through the running system, through the gateway only, that
//! prints each request and what came back, and fails on the first answer that is not what the
//! system promises: sign up and in, search, fill the cart, check out with an
//! `Idempotency-Key`, follow the order to `CONFIRMED`, the cart emptied, the confirmation
//! e-mail sent; then the failures:
//! the same key again, out of stock, a declined card with its compensations, and (with a system
//! of its own) the catalog stopped: its breaker open, fast answers, and its recovery.

use std::io::{IsTerminal as _, Write};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The card numbers of the test scheme.
const APPROVES: &str = "4242424242424242";
const DECLINES: &str = "4000000000000002";

/// The product the demo stock holds none of.
const OUT_OF_STOCK: &str = "kitchen-000";

/// A step of the demo did not go as the system promises.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The gateway could not be reached or answered something unreadable.
    #[error("{step}: {source}")]
    Http {
        /// The step.
        step: String,
        /// Why.
        source: reqwest::Error,
    },
    /// An answer other than the one promised.
    #[error("{step}: expected {expected}, got {got}")]
    Unexpected {
        /// The step.
        step: String,
        /// What the system promises.
        expected: String,
        /// What came back.
        got: String,
    },
}

/// Prints the demo: steps, requests and answers, in colour on a terminal.
struct Narrator<W> {
    out: W,
    colour: bool,
}

impl<W: Write> Narrator<W> {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    fn line(&mut self, text: &str) {
        // The demo's output is best effort: a closed pipe does not fail the demo.
        let _ = writeln!(self.out, "{text}");
    }

    fn title(&mut self, text: &str) {
        let title = self.paint("1;36", &format!("\n== {text}"));
        self.line(&title);
    }

    fn sent(&mut self, method: &Method, path: &str, body: Option<&Value>) {
        let arrow = self.paint("33", "→");
        let body = body.map(|b| format!(" {b}")).unwrap_or_default();
        self.line(&format!("  {arrow} {method} {path}{body}"));
    }

    fn received(&mut self, status: StatusCode, summary: &str) {
        let code = if status.is_success() { "32" } else { "31" };
        let status = self.paint(code, status.as_str());
        let arrow = self.paint("33", "←");
        self.line(&format!("  {arrow} {status} {summary}"));
    }

    fn note(&mut self, text: &str) {
        let text = self.paint("2", text);
        self.line(&format!("    {text}"));
    }
}

/// The demo's client: the gateway at `base`, signed in once `token` is set.
struct Client<W> {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    say: Narrator<W>,
}

/// An answer: status, selected headers, body.
struct Answer {
    status: StatusCode,
    location: Option<String>,
    replayed: bool,
    body: Value,
}

fn unexpected(step: &str, expected: impl Into<String>, got: impl std::fmt::Display) -> DemoError {
    DemoError::Unexpected {
        step: step.to_owned(),
        expected: expected.into(),
        got: got.to_string(),
    }
}

impl<W: Write> Client<W> {
    async fn call(
        &mut self,
        step: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> Result<Answer, DemoError> {
        self.say.sent(&method, path, body.as_ref());
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
            self.say.note(&format!("Idempotency-Key: {key}"));
        }
        if let Some(body) = &body {
            request = request.json(body);
        }
        let http = |source| DemoError::Http {
            step: step.to_owned(),
            source,
        };
        let response = request.send().await.map_err(http)?;
        let status = response.status();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let location = header("location");
        let replayed = header("idempotent-replayed").as_deref() == Some("true");
        let text = response.text().await.map_err(http)?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Answer {
            status,
            location,
            replayed,
            body,
        })
    }

    /// `call`, expecting `expected`.
    async fn expect(
        &mut self,
        step: &str,
        expected: StatusCode,
        method: Method,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> Result<Answer, DemoError> {
        let answer = self.call(step, method, path, body, key).await?;
        if answer.status != expected {
            self.say.received(answer.status, &answer.body.to_string());
            return Err(unexpected(
                step,
                expected.as_str(),
                format!("{} {}", answer.status, answer.body),
            ));
        }
        Ok(answer)
    }

    /// Follows the order at `location` until it leaves its working states, with a spinner on
    /// a terminal; the order.
    async fn follow(&mut self, step: &str, location: &str) -> Result<Value, DemoError> {
        let spinner = indicatif::ProgressBar::new_spinner();
        if !self.say.colour {
            spinner.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        spinner.enable_steady_tick(Duration::from_millis(80));
        let settled = ["CONFIRMED", "REJECTED", "CANCELLED", "NEEDS_ATTENTION"];
        let started = tokio::time::Instant::now();
        self.say.sent(&Method::GET, location, None);
        loop {
            let mut request = self.http.get(format!("{}{location}", self.base));
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            let http = |source| DemoError::Http {
                step: step.to_owned(),
                source,
            };
            let order: Value = request
                .send()
                .await
                .map_err(http)?
                .json()
                .await
                .map_err(http)?;
            let status = order["status"].as_str().unwrap_or("?").to_owned();
            spinner.set_message(format!("{status}…"));
            if settled.contains(&status.as_str()) {
                spinner.finish_and_clear();
                let took = started.elapsed();
                let reason = order["reason"]
                    .as_str()
                    .map(|reason| format!(" ({reason})"))
                    .unwrap_or_default();
                self.say.received(
                    StatusCode::OK,
                    &format!("{status}{reason} after {} ms", took.as_millis()),
                );
                return Ok(order);
            }
            if started.elapsed() > Duration::from_secs(30) {
                spinner.finish_and_clear();
                return Err(unexpected(step, "a settled order within 30 s", order));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The first product a search for `text` finds with at least 2 available.
    async fn in_stock(&mut self, text: &str) -> Result<String, DemoError> {
        let found = self
            .expect(
                "search",
                StatusCode::OK,
                Method::GET,
                &format!("/api/v1/products/search?q={text}&limit=5"),
                None,
                None,
            )
            .await?;
        let products: Vec<Value> = found.body["items"].as_array().cloned().unwrap_or_default();
        let names: Vec<&str> = products.iter().filter_map(|p| p["name"].as_str()).collect();
        self.say.received(
            found.status,
            &format!("{} products: {}", names.len(), names.join(", ")),
        );
        for product in &products {
            let Some(id) = product["id"].as_str() else {
                continue;
            };
            let stock = self
                .expect(
                    "stock",
                    StatusCode::OK,
                    Method::GET,
                    &format!("/api/v1/stock/{id}"),
                    None,
                    None,
                )
                .await?;
            let available = stock.body["available"].as_i64().unwrap_or(0);
            self.say
                .received(stock.status, &format!("{available} available"));
            if available >= 2 {
                return Ok(id.to_owned());
            }
        }
        Err(unexpected("search", format!("a {text} in stock"), "none"))
    }

    /// One search through the gateway that no cache has answered: its status, its problem's
    /// detail, and how long it took.
    async fn search_once(&mut self, n: u32) -> Result<(StatusCode, String, Duration), DemoError> {
        let path = format!("/api/v1/products/search?q=outage{n}");
        let started = tokio::time::Instant::now();
        let answer = self.call("search", Method::GET, &path, None, None).await?;
        let took = started.elapsed();
        let detail = answer.body["detail"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let summary = if answer.status.is_success() {
            format!("in {} ms", took.as_millis())
        } else {
            format!("in {} ms: {detail}", took.as_millis())
        };
        self.say.received(answer.status, &summary);
        Ok((answer.status, detail, took))
    }

    /// The catalog stopped: the gateway's calls to it fail, its breaker opens and the gateway
    /// answers 503 at once without asking; started again, the breaker lets a probe through
    /// after its open time and closes.
    async fn outage(&mut self, system: &mut crate::System) -> Result<(), DemoError> {
        let stopped =
            |error: std::io::Error| unexpected("the outage", "the catalog stopped", error);
        self.say
            .title("The catalog stopped: its breaker opens, and the answers come at once");
        system
            .stop_service("catalog", Duration::from_secs(10))
            .await
            .map_err(stopped)?;
        self.say.note("the catalog service is stopped");
        let mut n = 0;
        let mut failed = 0;
        let mut open = false;
        while n < 60 {
            n += 1;
            let (status, detail, took) = self.search_once(n).await?;
            if status.is_success() {
                return Err(unexpected(
                    "search",
                    "a failure",
                    "200 from a stopped catalog",
                ));
            }
            failed += 1;
            if status == StatusCode::SERVICE_UNAVAILABLE
                && detail.contains("open")
                && took < Duration::from_millis(250)
            {
                open = true;
                break;
            }
        }
        if !open {
            return Err(unexpected(
                "search",
                "the breaker open within 60 calls",
                format!("{failed} failures and no open breaker"),
            ));
        }
        self.say
            .note("the breaker is open: the gateway answers without calling the catalog");

        self.say
            .title("The catalog back: after the breaker's open time a probe goes through");
        system.start_service("catalog").await.map_err(stopped)?;
        self.say.note("the catalog service is started again");
        let spinner = indicatif::ProgressBar::new_spinner();
        if !self.say.colour {
            spinner.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        spinner.enable_steady_tick(Duration::from_millis(80));
        let started = tokio::time::Instant::now();
        loop {
            n += 1;
            spinner.set_message("waiting for the breaker to let a probe through…");
            let (status, _, _) = self.search_once(n).await?;
            if status.is_success() {
                spinner.finish_and_clear();
                self.say.note(&format!(
                    "closed again {} ms after the catalog came back",
                    started.elapsed().as_millis()
                ));
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(30) {
                spinner.finish_and_clear();
                return Err(unexpected("search", "200 within 30 s", status));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Checks out `body` under a fresh key and follows the order, which must end `REJECTED`
    /// for `reason`.
    async fn rejected(&mut self, step: &str, body: &Value, reason: &str) -> Result<(), DemoError> {
        let key = uuid::Uuid::new_v4().to_string();
        let placed = self
            .expect(
                step,
                StatusCode::ACCEPTED,
                Method::POST,
                "/api/v1/checkout",
                Some(body.clone()),
                Some(&key),
            )
            .await?;
        self.say
            .received(placed.status, &format!("order {}", placed.body["order_id"]));
        let location = placed
            .location
            .ok_or_else(|| unexpected(step, "a Location", "none"))?;
        let order = self.follow(step, &location).await?;
        self.history(&order);
        if order["status"] != "REJECTED" || order["reason"] != reason {
            return Err(unexpected(step, format!("REJECTED with {reason}"), &order));
        }
        Ok(())
    }

    fn history(&mut self, order: &Value) {
        let steps: Vec<String> = order["history"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|entry| {
                let status = entry["status"].as_str().unwrap_or("");
                match entry["step"].as_str() {
                    Some(step) => format!("{status}/{step}"),
                    None => status.to_owned(),
                }
            })
            .collect();
        self.say.note(&format!("history: {}", steps.join(" → ")));
    }
}

fn checkout_body(lines: &Value, card: &str) -> Value {
    json!({
        "lines": lines,
        "shipping_address": {"name": "Demo Customer", "line1": "1 Demo Street",
            "city": "Amsterdam", "postcode": "1012AB", "country": "NL"},
        "card": card,
    })
}

/// Runs the demo against the gateway at `base` (`http://127.0.0.1:8080`), writing what it
/// does to `out` (in colour when `colour`).
///
/// # Errors
///
/// The first step whose answer is not what the system promises.
pub async fn run<W: Write>(
    base: &str,
    out: W,
    colour: bool,
    system: Option<&mut crate::System>,
) -> Result<(), DemoError> {
    let mut client = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|source| DemoError::Http {
                step: "the HTTP client".into(),
                source,
            })?,
        base: base.trim_end_matches('/').to_owned(),
        token: None,
        say: Narrator { out, colour },
    };

    client.say.title("Sign up, then sign in");
    let email = format!("demo-{}@example.com", uuid::Uuid::new_v4().simple());
    let password = "demo-password-42";
    let registered = client
        .expect(
            "register",
            StatusCode::ACCEPTED,
            Method::POST,
            "/api/v1/auth/register",
            Some(json!({"email": email, "password": password, "name": "Demo Customer"})),
            None,
        )
        .await?;
    client
        .say
        .received(registered.status, &registered.body.to_string());
    let login = client
        .expect(
            "login",
            StatusCode::OK,
            Method::POST,
            "/api/v1/auth/login",
            Some(json!({"email": email, "password": password})),
            None,
        )
        .await?;
    let token = login.body["access_token"]
        .as_str()
        .ok_or_else(|| unexpected("login", "an access token", &login.body))?;
    client.say.received(
        login.status,
        &format!("an access token ({} bytes)", token.len()),
    );
    client.token = Some(token.to_owned());

    client
        .say
        .title("Search the catalog: a teapot, and a kettle to go with it");
    let product = client.in_stock("teapot").await?;
    let kettle = client.in_stock("kettle").await?;

    client.say.title("Fill the cart");
    client
        .expect(
            "add to cart",
            StatusCode::OK,
            Method::PUT,
            &format!("/api/v1/cart/items/{product}"),
            Some(json!({"quantity": 2})),
            None,
        )
        .await?;
    let cart = client
        .expect(
            "add to cart",
            StatusCode::OK,
            Method::PUT,
            &format!("/api/v1/cart/items/{kettle}"),
            Some(json!({"quantity": 1})),
            None,
        )
        .await?;
    let shown: Vec<String> = cart.body["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|line| {
            format!(
                "{} × {} at {} {}",
                line["quantity"],
                line["name"].as_str().unwrap_or("?"),
                line["unit_price_minor"],
                line["currency"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    client.say.received(
        cart.status,
        &format!(
            "{} (the catalog's prices now, in minor units); totals {}",
            shown.join(", "),
            cart.body["totals"]
        ),
    );
    let lines: Value = cart.body["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|line| json!({"product_id": line["product_id"], "quantity": line["quantity"]}))
        .collect();

    client.say.title("Check out the cart, and follow the order");
    let key = uuid::Uuid::new_v4().to_string();
    let body = checkout_body(&lines, APPROVES);
    let placed = client
        .expect(
            "checkout",
            StatusCode::ACCEPTED,
            Method::POST,
            "/api/v1/checkout",
            Some(body.clone()),
            Some(&key),
        )
        .await?;
    let location = placed
        .location
        .clone()
        .ok_or_else(|| unexpected("checkout", "a Location", "none"))?;
    client.say.received(
        placed.status,
        &format!("order {} at {location}", placed.body["order_id"]),
    );
    let order = client.follow("the order", &location).await?;
    client.history(&order);
    if order["status"] != "CONFIRMED" {
        return Err(unexpected("the order", "CONFIRMED", &order));
    }
    let mut emptied = false;
    for _ in 0..50 {
        let cart = client
            .call("the cart", Method::GET, "/api/v1/cart", None, None)
            .await?;
        if cart.body["lines"] == json!([]) {
            client
                .say
                .received(cart.status, "empty: what was bought left the cart");
            emptied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !emptied {
        return Err(unexpected(
            "the cart",
            "emptied by the confirmed order",
            "still full",
        ));
    }

    client
        .say
        .title("The confirmation, as the notifications service sent it");
    let order_id = order["order_id"].clone();
    let mut told = None;
    for _ in 0..200 {
        let page = client
            .call(
                "notifications",
                Method::GET,
                "/api/v1/notifications",
                None,
                None,
            )
            .await?;
        let sent = page.body["items"].as_array().and_then(|items| {
            items.iter().find(|n| {
                n["order_id"] == order_id && n["channel"] == "email" && n["status"] == "SENT"
            })
        });
        if let Some(sent) = sent {
            told = Some((page.status, sent.clone()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some((status, email)) = told else {
        return Err(unexpected(
            "notifications",
            "the order's confirmation sent by e-mail",
            "none within 20 s",
        ));
    };
    client.say.received(
        status,
        &format!(
            "e-mail sent: {:?}",
            email["subject"].as_str().unwrap_or_default()
        ),
    );

    client
        .say
        .title("Bought together: recommendations learn from the order");
    client
        .expect(
            "view",
            StatusCode::ACCEPTED,
            Method::POST,
            &format!("/api/v1/product-views/{product}"),
            None,
            None,
        )
        .await?;
    client
        .say
        .received(StatusCode::ACCEPTED, "the view is counted");
    let path = format!("/api/v1/recommendations?product={product}&limit=3");
    let mut learned = None;
    for _ in 0..100 {
        let picks = client
            .call("recommendations", Method::GET, &path, None, None)
            .await?;
        let has_kettle = picks.body["items"]
            .as_array()
            .is_some_and(|items| items.iter().any(|item| item["id"] == kettle.as_str()));
        if picks.status == StatusCode::OK && picks.body["basis"] == "co-purchase" && has_kettle {
            learned = Some(picks);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let Some(picks) = learned else {
        return Err(unexpected(
            "recommendations",
            "the kettle, bought with the teapot",
            "not within 20 s",
        ));
    };
    let names: Vec<&str> = picks.body["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["name"].as_str())
        .collect();
    client.say.received(
        picks.status,
        &format!("bought with it: {} (basis co-purchase)", names.join(", ")),
    );

    client
        .say
        .title("The same Idempotency-Key again: the same order, not a second one");
    let again = client
        .expect(
            "checkout again",
            StatusCode::ACCEPTED,
            Method::POST,
            "/api/v1/checkout",
            Some(body),
            Some(&key),
        )
        .await?;
    if again.body["order_id"] != placed.body["order_id"] || !again.replayed {
        return Err(unexpected(
            "checkout again",
            "the first order, replayed",
            &again.body,
        ));
    }
    client.say.received(
        again.status,
        &format!(
            "order {} again (Idempotent-Replayed: true)",
            again.body["order_id"]
        ),
    );

    client.say.title("Out of stock: rejected, nothing charged");
    let none_left = json!([{"product_id": OUT_OF_STOCK, "quantity": 1}]);
    client
        .rejected(
            "out of stock",
            &checkout_body(&none_left, APPROVES),
            "OUT_OF_STOCK",
        )
        .await?;

    client
        .say
        .title("A declined card: the stock held for it is released");
    client
        .rejected(
            "declined",
            &checkout_body(&lines, DECLINES),
            "PAYMENT_DECLINED",
        )
        .await?;

    match system {
        Some(system) => client.outage(system).await?,
        None => client.say.note(
            "(a service stopped and its breaker: only with a system of the demo's own, \
             `shop demo --start`)",
        ),
    }

    let done = client.say.paint(
        "1;32",
        "\nThe demo ran to its end: every answer was the one promised.",
    );
    client.say.line(&done);
    Ok(())
}

/// Whether standard output is a terminal (the demo's colour and spinner).
#[must_use]
pub fn on_terminal() -> bool {
    std::io::stdout().is_terminal()
}
