//! The login web app: server-rendered HTML, no front-end build step.
//!
//! Element ids are stable, for tests and scripts: `#login-form` (input `user`),
//! `#user`, `#instance`, `#sessions` (one `li` per session, the current one with
//! class `current`; the others each hold an `.end-session` form),
//! `#logout-form`, `#logout-everywhere-form`.
//!
//! Every POST carries a per-session CSRF token (a hidden `csrf` field) on top of
//! the `SameSite=Lax` cookie: a POST without the right token is refused with 403
//! and changes nothing.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Form, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Router, middleware};
use base64::Engine as _;
use serde::Deserialize;
use unstuck::{Session, SessionLayer, SessionStore, StorageKey};

/// The session key that holds the CSRF token.
const CSRF: &str = "csrf";
/// The longest user name the form accepts.
const MAX_USER_LEN: usize = 64;

#[derive(Clone)]
struct App {
    /// The name shown in `#instance`: which instance served the page.
    instance: Arc<str>,
    /// The store behind the session layer, to end one listed session.
    store: Arc<dyn SessionStore>,
}

/// The app's routes on `layer`, naming itself `instance` on every page.
pub fn router(instance: &str, layer: SessionLayer) -> Router {
    let app = App {
        instance: instance.into(),
        store: layer.store().clone(),
    };
    Router::new()
        .route("/", get(home))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/logout-everywhere", post(logout_everywhere))
        .route("/sessions/end", post(end_session))
        .layer(layer)
        .layer(middleware::map_response(security_headers))
        .with_state(app)
}

/// Pages are per user and change on every request: never cached, never framed.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

type Reply = Result<Response, unstuck::Error>;

/// The form token of this session, made on first use.
fn csrf_token(session: &Session) -> Result<String, unstuck::Error> {
    if let Some(token) = session.get::<String>(CSRF)? {
        return Ok(token);
    }
    let token = new_token();
    session.insert(CSRF, &token)?;
    Ok(token)
}

fn new_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// True when `sent` is this session's token (compared in constant time).
fn csrf_ok(session: &Session, sent: Option<&str>) -> bool {
    let (Ok(Some(expected)), Some(sent)) = (session.get::<String>(CSRF), sent) else {
        return false;
    };
    expected.len() == sent.len()
        && expected
            .bytes()
            .zip(sent.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn refused(app: &App) -> Response {
    let body = format!(
        "<h1>Request refused</h1>\
         <p id=\"refused\">This form was missing its security token or it was out of \
         date, so nothing was changed.</p>\
         <p><a href=\"/\">Back to the start page</a></p>{}",
        served_by(app)
    );
    (StatusCode::FORBIDDEN, page("Refused", &body)).into_response()
}

fn see_home() -> Response {
    Redirect::to("/").into_response()
}

async fn home(State(app): State<App>, session: Session) -> Reply {
    let token = csrf_token(&session)?;
    let Some(user) = session.user() else {
        return Ok(login_page(&app, &token).into_response());
    };
    let visits: u64 = session.get("visits")?.unwrap_or(0) + 1;
    session.insert("visits", visits)?;
    let sessions = session.user_sessions().await?;
    let current = session.storage_key();
    let now = SystemTime::now();

    let mut body = String::new();
    let _ = write!(
        body,
        "<p>Logged in as <strong id=\"user\">{}</strong>. {}</p>",
        escape(&user),
        served_by(&app)
    );
    let _ = write!(
        body,
        "<p class=\"hint\">Reload the page: a round-robin balancer sends each request \
         to any instance, and every one of them knows you.</p>"
    );

    body.push_str("<h2>This session</h2><table id=\"session-data\">");
    if let Some(expiry) = session.expiry() {
        let _ = write!(
            body,
            "<tr><th>age</th><td id=\"session-age\">{}</td></tr>\
             <tr><th>idle expiry</th><td>in {}</td></tr>\
             <tr><th>absolute expiry</th><td>in {}</td></tr>",
            age(now, expiry.created_at),
            until(now, expiry.expires_at),
            until(now, expiry.absolute_deadline),
        );
    }
    let mut keys = session.keys();
    keys.sort();
    for key in keys {
        let value = if key == CSRF {
            "(hidden: the form token)".to_owned()
        } else {
            let value: serde_json::Value = session.get(&key)?.unwrap_or_default();
            value.to_string()
        };
        let _ = write!(
            body,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(&key),
            escape(&value)
        );
    }
    body.push_str("</table>");

    let _ = write!(
        body,
        "<h2>Your active sessions ({})</h2><ul id=\"sessions\">",
        sessions.len()
    );
    for listed in &sessions {
        let short = &listed.key.as_str()[..8];
        let started = age(now, listed.created_at);
        if Some(&listed.key) == current.as_ref() {
            let _ = write!(
                body,
                "<li class=\"current\" data-key=\"{short}\">{short}… started {started} ago \
                 <em>(this browser)</em></li>"
            );
        } else {
            let _ = write!(
                body,
                "<li data-key=\"{short}\">{short}… started {started} ago \
                 <form class=\"end-session\" method=\"post\" action=\"/sessions/end\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{token}\">\
                 <input type=\"hidden\" name=\"key\" value=\"{key}\">\
                 <button type=\"submit\">End this session</button></form></li>",
                key = listed.key.as_str(),
            );
        }
    }
    body.push_str("</ul>");

    let _ = write!(
        body,
        "<div class=\"actions\">\
         <form id=\"logout-form\" method=\"post\" action=\"/logout\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{token}\">\
         <button type=\"submit\">Log out</button></form>\
         <form id=\"logout-everywhere-form\" method=\"post\" action=\"/logout-everywhere\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{token}\">\
         <button type=\"submit\">Log out of all devices</button></form></div>"
    );
    Ok(page(&format!("{} — unstuck demo", escape(&user)), &body).into_response())
}

fn login_page(app: &App, token: &str) -> impl IntoResponse + use<> {
    let body = format!(
        "<p>A demo of sessions shared by stateless instances. Any user name logs \
         you in: there are no passwords, this is not real authentication.</p>\
         <form id=\"login-form\" method=\"post\" action=\"/login\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{token}\">\
         <label>User name <input name=\"user\" required maxlength=\"{MAX_USER_LEN}\" \
         autofocus></label> <button type=\"submit\">Log in</button></form>\
         <p>{}</p>",
        served_by(app)
    );
    page("Log in — unstuck demo", &body)
}

fn served_by(app: &App) -> String {
    format!(
        "Served by instance <strong id=\"instance\">{}</strong>.",
        escape(&app.instance)
    )
}

#[derive(Deserialize)]
struct LoginForm {
    csrf: Option<String>,
    user: Option<String>,
}

async fn login(State(app): State<App>, session: Session, Form(form): Form<LoginForm>) -> Reply {
    if !csrf_ok(&session, form.csrf.as_deref()) {
        return Ok(refused(&app));
    }
    let user = form.user.unwrap_or_default();
    let user = user.trim();
    if user.is_empty() || user.chars().count() > MAX_USER_LEN {
        let body = format!(
            "<p id=\"error\">A user name of 1 to {MAX_USER_LEN} characters, please.</p>\
             <p><a href=\"/\">Back</a></p>"
        );
        return Ok((StatusCode::BAD_REQUEST, page("Log in", &body)).into_response());
    }
    // A new ID and a new form token at every privilege change: an ID or token an
    // attacker planted before login is worthless after it.
    session.cycle_id();
    session.set_user(user);
    session.insert(CSRF, new_token())?;
    session.insert("visits", 0)?;
    Ok(see_home())
}

#[derive(Deserialize)]
struct TokenForm {
    csrf: Option<String>,
}

async fn logout(State(app): State<App>, session: Session, Form(form): Form<TokenForm>) -> Response {
    if !csrf_ok(&session, form.csrf.as_deref()) {
        return refused(&app);
    }
    session.destroy();
    see_home()
}

async fn logout_everywhere(
    State(app): State<App>,
    session: Session,
    Form(form): Form<TokenForm>,
) -> Reply {
    if !csrf_ok(&session, form.csrf.as_deref()) {
        return Ok(refused(&app));
    }
    session.destroy_user_sessions().await?;
    Ok(see_home())
}

#[derive(Deserialize)]
struct EndForm {
    csrf: Option<String>,
    key: Option<String>,
}

async fn end_session(State(app): State<App>, session: Session, Form(form): Form<EndForm>) -> Reply {
    if !csrf_ok(&session, form.csrf.as_deref()) {
        return Ok(refused(&app));
    }
    let key = form.key.as_deref().and_then(StorageKey::parse);
    // Only a session of this same user may be ended from here: the key comes
    // from the form, and a key of anyone else's session must do nothing.
    let listed = session.user_sessions().await?;
    if let Some(key) = key.filter(|key| listed.iter().any(|s| &s.key == key)) {
        if Some(&key) == session.storage_key().as_ref() {
            session.destroy();
        } else {
            app.store.delete(&key).await?;
        }
    }
    Ok(see_home())
}

fn page(title: &str, body: &str) -> impl IntoResponse + use<> {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <link rel=\"icon\" href=\"data:,\"><title>{title}</title><style>{STYLE}</style>\
         </head><body><main><h1>unstuck <span>sessions that survive any instance</span></h1>\
         {body}</main></body></html>"
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html)
}

const STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}\
main{max-width:44rem;margin:1.5rem auto;background:#fff;padding:1rem 1.5rem 1.5rem;border-radius:8px;\
box-shadow:0 1px 3px #0002}h1{font-size:1.4rem;margin:.2rem 0 1rem}h1 span{font-weight:400;color:#667;\
font-size:1rem;margin-left:.4rem}h2{font-size:1.05rem;margin:1.2rem 0 .4rem}#instance{background:#e3f0ff;\
color:#0b4a8b;padding:.1rem .4rem;border-radius:4px}.hint{color:#667;font-size:.9rem}table{border-collapse:\
collapse}th,td{text-align:left;padding:.15rem 1rem .15rem 0;font-size:.92rem}th{color:#667;font-weight:500}\
ul{padding-left:1.2rem}li{margin:.3rem 0}li.current{font-weight:600}li form{display:inline;margin-left:.5rem}\
.actions{display:flex;gap:.6rem;margin-top:1.2rem}button{font:inherit;padding:.3rem .8rem;border-radius:5px;\
border:1px solid #99a;background:#fff;cursor:pointer}button:hover{background:#eef}";

/// How long ago `then` was, roughly.
fn age(now: SystemTime, then: SystemTime) -> String {
    human(now.duration_since(then).unwrap_or_default())
}

/// How long until `then`, roughly.
fn until(now: SystemTime, then: SystemTime) -> String {
    human(then.duration_since(now).unwrap_or_default())
}

fn human(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0..120 => format!("{secs} s"),
        120..7200 => format!("{} min", secs / 60),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

/// Escapes text for HTML element content and quoted attributes.
fn escape(text: &str) -> String {
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
