//! The login app behind the cluster example's round-robin balancer, in real
//! headless Chromium: what a user sees when sessions live in a shared store.
//!
//! Needs Debian's `chromium` and `chromium-driver` (scripts/test installs
//! them); without them these tests fail with an install hint. They start the
//! example binaries: after changing an example, a targeted run
//! (`cargo test --all-features --test browser`) needs
//! `cargo build --all-features --examples` first. The screenshot of the
//! logged-in page goes to `target/browser-tests/logged-in.png`.

mod common;

use std::collections::BTreeSet;

use common::browser::{ChromeDriver, ExampleServer, PATIENCE, count, element, eventually, text};
use common::hogs::CpuHogs;
use fantoccini::{Client, Locator};

/// Logs `browser` in as `user` through the login form.
async fn log_in(browser: &Client, base: &str, user: &str) {
    browser
        .goto(&format!("{base}/"))
        .await
        .expect("open the app");
    let form = element(browser, "#login-form").await;
    form.find(Locator::Css("input[name=user]"))
        .await
        .expect("the user input")
        .send_keys(user)
        .await
        .expect("type the user name");
    form.find(Locator::Css("button[type=submit]"))
        .await
        .expect("the login button")
        .click()
        .await
        .expect("click log in");
    assert_eq!(text(browser, "#user").await, user, "logged in as {user}");
}

/// Reloads and returns (user, instance, visits) of the page that came back.
async fn reload(browser: &Client) -> (Option<String>, String, Option<u64>) {
    browser.refresh().await.expect("reload");
    let instance = text(browser, "#instance").await;
    let user = match browser.find(Locator::Id("user")).await {
        Ok(user) => Some(user.text().await.expect("#user text")),
        Err(_) => None,
    };
    let visits = match browser
        .find(Locator::XPath(
            "//table[@id='session-data']//tr[th='visits']/td",
        ))
        .await
    {
        Ok(cell) => cell.text().await.expect("visits").parse().ok(),
        Err(_) => None,
    };
    (user, instance, visits)
}

/// A plain HTTP client that logs in through the forms (a second user beside
/// the browsers), keeping its cookie and form token.
struct FormClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl FormClient {
    async fn log_in(base: &str, user: &str) -> Self {
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(PATIENCE)
            .build()
            .unwrap();
        let mut client = Self {
            http,
            base: base.to_owned(),
            token: String::new(),
        };
        client.token = client.page_token().await;
        let answer = client.post("/login", &[("user", user)]).await;
        assert!(answer.is_redirection(), "{user} could not log in: {answer}");
        client.token = client.page_token().await;
        client
    }

    /// The form token on the start page.
    async fn page_token(&self) -> String {
        let page = self
            .http
            .get(format!("{}/", self.base))
            .send()
            .await
            .expect("GET /")
            .text()
            .await
            .expect("page");
        let (_, rest) = page
            .split_once("name=\"csrf\" value=\"")
            .expect("a form token on the page");
        rest.split('"').next().unwrap().to_owned()
    }

    /// Posts a form with the token; the answer's status.
    async fn post(&self, path: &str, fields: &[(&str, &str)]) -> reqwest::StatusCode {
        let mut form: Vec<(&str, &str)> = fields.to_vec();
        form.push(("csrf", &self.token));
        self.http
            .post(format!("{}{path}", self.base))
            .form(&form)
            .send()
            .await
            .expect("POST")
            .status()
    }
}

/// Submits the form `css` (its submit button) and waits until `then` appears.
async fn submit(browser: &Client, css: &str, then: &str) {
    element(browser, &format!("{css} button[type=submit]"))
        .await
        .click()
        .await
        .unwrap_or_else(|e| panic!("submit {css}: {e}"));
    element(browser, then).await;
}

/// Runs `script` (an async body that ends with `return …`) in the page.
async fn page_fetch_status(browser: &Client, script: &str) -> u64 {
    let wrapped = format!(
        "const done = arguments[arguments.length - 1]; \
         (async () => {{ {script} }})().then(done, e => done('error: ' + e));"
    );
    let value = browser
        .execute_async(&wrapped, vec![])
        .await
        .expect("run the script");
    value
        .as_u64()
        .unwrap_or_else(|| panic!("the page script gave {value}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_logged_in_session_is_served_by_every_instance_and_survives_a_stopped_one() {
    // The guarantee must hold on a busy machine: three busy loops beside it.
    let _hogs = CpuHogs::start(3, 300);
    let cluster = ExampleServer::start("cluster", &[("UNSTUCK_INSTANCES", "3")]);
    let base = cluster.base.clone();
    ChromeDriver::run(1, move |browsers| async move {
        let browser = &browsers[0];
        log_in(browser, &base, "alice").await;

        // Round robin with no affinity: the same session on several instances,
        // and each reload's write (the visit count) seen by the next instance.
        let mut served_by = BTreeSet::new();
        // The page after login counted the first visit.
        let mut last_visits = 1;
        for _ in 0..6 {
            let (user, instance, visits) = reload(browser).await;
            assert_eq!(user.as_deref(), Some("alice"), "on {instance}");
            let visits = visits.expect("the visit count");
            assert_eq!(visits, last_visits + 1, "visits on {instance}");
            last_visits = visits;
            served_by.insert(instance);
        }
        assert!(
            served_by.len() >= 2,
            "one session should be served by several instances, got {served_by:?}"
        );

        // HttpOnly: the browser holds the session cookie, page scripts can't read it.
        let cookies = browser.get_all_cookies().await.expect("cookies");
        let session_cookie = cookies
            .iter()
            .find(|c| c.name() == "id")
            .unwrap_or_else(|| panic!("no session cookie among {cookies:?}"));
        assert_eq!(session_cookie.http_only(), Some(true));
        let visible = browser
            .execute("return document.cookie", vec![])
            .await
            .expect("read document.cookie");
        let visible = visible.as_str().unwrap_or_default();
        assert!(
            !visible.contains(session_cookie.value()) && !visible.contains("id="),
            "document.cookie exposes the session cookie: {visible:?}"
        );

        // Stop the instance that served the last page: still logged in, on the others.
        let (_, stopped, _) = reload(browser).await;
        last_visits += 1;
        let number = stopped.trim_start_matches("app-");
        let admin = reqwest::Client::new();
        let answer = admin
            .post(format!("{base}/_cluster/{number}/stop"))
            .send()
            .await
            .expect("stop an instance");
        assert!(answer.status().is_success() || answer.status().is_redirection());
        let mut after = BTreeSet::new();
        for _ in 0..6 {
            let (user, instance, visits) = reload(browser).await;
            assert_eq!(user.as_deref(), Some("alice"), "after stopping {stopped}");
            assert_ne!(instance, stopped, "a stopped instance served a page");
            assert_eq!(visits, Some(last_visits + 1), "visits on {instance}");
            last_visits += 1;
            after.insert(instance);
        }
        assert_eq!(after.len(), 2, "the two running instances share the load");

        // Started again, it knows the session at once.
        admin
            .post(format!("{base}/_cluster/{number}/start"))
            .send()
            .await
            .expect("start the instance again");
        let mut back = false;
        for _ in 0..6 {
            let (user, instance, _) = reload(browser).await;
            assert_eq!(user.as_deref(), Some("alice"), "on {instance}");
            back |= instance == stopped;
        }
        assert!(back, "{stopped} served no page after its restart");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn log_out_of_all_devices_in_one_browser_logs_the_other_out_too() {
    let cluster = ExampleServer::start("cluster", &[]);
    let base = cluster.base.clone();
    ChromeDriver::run(2, move |browsers| async move {
        let (laptop, phone) = (&browsers[0], &browsers[1]);
        log_in(laptop, &base, "dana").await;
        log_in(phone, &base, "dana").await;

        laptop.refresh().await.expect("reload");
        eventually("two sessions listed", PATIENCE, || async {
            (count(laptop, "#sessions li").await == 2).then_some(())
        })
        .await;
        assert_eq!(count(laptop, "#sessions li.current").await, 1);
        assert_eq!(count(laptop, "#sessions li .end-session").await, 1);
        let screenshot = laptop.screenshot().await.expect("screenshot");
        let path = common::browser::output_dir().join("logged-in.png");
        std::fs::write(&path, screenshot).expect("save the screenshot");
        println!("screenshot of the logged-in page: {}", path.display());

        submit(laptop, "#logout-everywhere-form", "#login-form").await;
        let (user, _, _) = reload(phone).await;
        assert_eq!(user, None, "the other browser is still logged in");
        element(phone, "#login-form").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ending_one_listed_session_ends_only_that_one() {
    let cluster = ExampleServer::start("cluster", &[]);
    let base = cluster.base.clone();
    ChromeDriver::run(3, move |browsers| async move {
        let (laptop, phone, tablet) = (&browsers[0], &browsers[1], &browsers[2]);
        for browser in [laptop, phone, tablet] {
            log_in(browser, &base, "erin").await;
        }
        let phone_key = element(phone, "#sessions li.current")
            .await
            .attr("data-key")
            .await
            .expect("data-key")
            .expect("the current session's key");

        laptop.refresh().await.expect("reload");
        assert_eq!(count(laptop, "#sessions li").await, 3);

        // Another user who learned the full key of one of erin's sessions
        // cannot end it: only a session of the same user is ended.
        let tablet_key = element(tablet, "#sessions li.current")
            .await
            .attr("data-key")
            .await
            .expect("data-key")
            .expect("the current session's key");
        let tablet_full_key = element(
            laptop,
            &format!("#sessions li[data-key='{tablet_key}'] input[name=key]"),
        )
        .await
        .attr("value")
        .await
        .expect("value")
        .expect("the tablet's full key");
        let mallory = FormClient::log_in(&base, "mallory").await;
        let answer = mallory
            .post("/sessions/end", &[("key", &tablet_full_key)])
            .await;
        // Accepted (the token was right), and ignored.
        assert!(
            answer.is_redirection(),
            "mallory's form was refused: {answer}"
        );
        let (tablet_user, _, _) = reload(tablet).await;
        assert_eq!(
            tablet_user.as_deref(),
            Some("erin"),
            "another user ended erin's session"
        );
        laptop.refresh().await.expect("reload");
        assert_eq!(count(laptop, "#sessions li").await, 3);
        let end = format!("#sessions li[data-key='{phone_key}'] .end-session button");
        element(laptop, &end)
            .await
            .click()
            .await
            .expect("end the phone's session");
        eventually("the laptop's list without the phone", PATIENCE, || async {
            (count(laptop, "#sessions li").await == 2 && count(laptop, "#user").await == 1)
                .then_some(())
        })
        .await;

        let (phone_user, _, _) = reload(phone).await;
        assert_eq!(phone_user, None, "the ended session still works");
        let (tablet_user, _, _) = reload(tablet).await;
        assert_eq!(
            tablet_user.as_deref(),
            Some("erin"),
            "another session ended too"
        );
        assert_eq!(count(tablet, "#sessions li").await, 2);
        let (laptop_user, _, _) = reload(laptop).await;
        assert_eq!(laptop_user.as_deref(), Some("erin"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_without_the_csrf_token_is_refused_and_changes_nothing() {
    let cluster = ExampleServer::start("cluster", &[]);
    let base = cluster.base.clone();
    // A page on another site (`localhost` is another site than `127.0.0.1`)
    // whose form posts to the app, with a real token it somehow learned.
    let attacker = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let attacker_port = attacker.local_addr().unwrap().port();
    let (token_tx, token_rx) = tokio::sync::watch::channel(String::new());
    let target = base.clone();
    let attacker_app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let token = token_rx.borrow().clone();
            let target = target.clone();
            async move {
                axum::response::Html(format!(
                    "<form id=\"forged\" method=\"post\" action=\"{target}/logout-everywhere\">\
                     <input type=\"hidden\" name=\"csrf\" value=\"{token}\">\
                     <button type=\"submit\">Win a prize</button></form>"
                ))
            }
        }),
    );
    let attacker_server = tokio::spawn(async move {
        axum::serve(attacker, attacker_app).await.unwrap();
    });

    ChromeDriver::run(1, move |browsers| async move {
        let browser = &browsers[0];
        log_in(browser, &base, "frank").await;
        let token = element(browser, "#logout-form input[name=csrf]")
            .await
            .attr("value")
            .await
            .expect("token attribute")
            .expect("a token");

        // Same origin, so the cookie goes along: only the token stops these.
        let without = page_fetch_status(
            browser,
            "const r = await fetch('/logout-everywhere', {method: 'POST', \
             headers: {'content-type': 'application/x-www-form-urlencoded'}, body: ''}); \
             return r.status;",
        )
        .await;
        assert_eq!(without, 403, "a POST without the token");
        let wrong = page_fetch_status(
            browser,
            "const r = await fetch('/logout', {method: 'POST', \
             headers: {'content-type': 'application/x-www-form-urlencoded'}, \
             body: 'csrf=not-the-token'}); return r.status;",
        )
        .await;
        assert_eq!(wrong, 403, "a POST with a wrong token");
        let (user, _, _) = reload(browser).await;
        assert_eq!(
            user.as_deref(),
            Some("frank"),
            "a refused POST logged the user out"
        );

        // Cross-site: SameSite=Lax keeps the cookie off the forged POST, so even
        // a leaked token is useless from another site.
        token_tx.send(token).unwrap();
        browser
            .goto(&format!("http://localhost:{attacker_port}/"))
            .await
            .expect("open the attacker's page");
        submit(browser, "#forged", "#refused").await;
        browser
            .goto(&format!("{base}/"))
            .await
            .expect("back to the app");
        assert_eq!(
            text(browser, "#user").await,
            "frank",
            "the forged POST logged out"
        );
        assert_eq!(count(browser, "#sessions li").await, 1);
    })
    .await;
    attacker_server.abort();
}

/// The login example on its own (no balancer), as `examples/login.rs` documents.
#[tokio::test(flavor = "multi_thread")]
async fn the_login_example_alone_logs_in_and_out() {
    let login = ExampleServer::start("login", &[("UNSTUCK_INSTANCE", "solo")]);
    let base = login.base.clone();
    ChromeDriver::run(1, move |browsers| async move {
        let browser = &browsers[0];
        log_in(browser, &base, "<b>gus</b>").await;
        assert_eq!(text(browser, "#instance").await, "solo");
        submit(browser, "#logout-form", "#login-form").await;
        let (user, _, _) = reload(browser).await;
        assert_eq!(user, None);
    })
    .await;
}
