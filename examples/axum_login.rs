//! axum-login 0.18 on unstuck's `RedisStore`: tower-sessions 0.14's
//! `SessionManagerLayer` with our store under it, so logins are shared by every
//! instance and survive a restart (and, on Sentinel or Cluster, a failover).
//!
//! ```sh
//! cargo run --example axum_login --features redis,tower-sessions-014
//! # other terminal (UNSTUCK_COOKIE_SECURE=0 for plain http):
//! curl -i -c jar -b jar http://127.0.0.1:3000/protected            # 401
//! curl -i -c jar -b jar -H 'content-type: application/json' \
//!      -d '{"username":"ferris","password":"hunter42"}' http://127.0.0.1:3000/login
//! curl -c jar -b jar http://127.0.0.1:3000/protected               # hello, ferris
//! curl -c jar -b jar -X POST http://127.0.0.1:3000/logout
//! ```
//!
//! Environment: `UNSTUCK_LISTEN` (default `127.0.0.1:3000`), `UNSTUCK_STORE` (a
//! `redis://`, `redis+sentinel://` or `redis+cluster://` URL, default
//! `redis://127.0.0.1:6379`), `UNSTUCK_COOKIE_SECURE=0` to drop `Secure` for
//! plain-http testing. Start it twice on two ports against one Redis: a login
//! on one instance is a login on both, and so is a logout.
//!
//! The user backend is a fixed in-memory map with SHA-256 password digests, to
//! keep the example small; a real one keeps users in a database and hashes
//! passwords with a slow KDF (argon2, e.g. through the `password-auth` crate).

#[cfg(all(feature = "redis", feature = "tower-sessions-014"))]
mod app {
    use std::collections::HashMap;
    use std::sync::Arc;

    use axum::Router;
    use axum::extract::Json;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    use axum_login::tower_sessions::cookie::time::Duration;
    use axum_login::tower_sessions::{Expiry, SessionManagerLayer};
    use axum_login::{AuthManagerLayerBuilder, AuthUser, AuthnBackend, UserId, login_required};
    use serde::Deserialize;
    use sha2::{Digest, Sha256};
    use unstuck::RedisStore;

    /// A user as the backend knows them.
    #[derive(Clone, Debug)]
    pub struct User {
        name: String,
        /// Also what axum-login compares to validate a session: changing the
        /// password ends every session of the user.
        password_digest: Vec<u8>,
    }

    impl AuthUser for User {
        type Id = String;

        fn id(&self) -> String {
            self.name.clone()
        }

        fn session_auth_hash(&self) -> &[u8] {
            &self.password_digest
        }
    }

    /// What `POST /login` takes.
    #[derive(Clone, Deserialize)]
    pub struct Credentials {
        pub username: String,
        pub password: String,
    }

    /// Users in memory.
    #[derive(Clone, Debug)]
    pub struct Users(Arc<HashMap<String, User>>);

    fn digest(password: &str) -> Vec<u8> {
        Sha256::digest(password.as_bytes()).to_vec()
    }

    impl Users {
        /// `ferris` / `hunter42` and `corro` / `unsafe-ly`.
        pub fn demo() -> Self {
            let users = [("ferris", "hunter42"), ("corro", "unsafe-ly")]
                .into_iter()
                .map(|(name, password)| {
                    let user = User {
                        name: name.to_owned(),
                        password_digest: digest(password),
                    };
                    (name.to_owned(), user)
                })
                .collect();
            Self(Arc::new(users))
        }
    }

    impl AuthnBackend for Users {
        type User = User;
        type Credentials = Credentials;
        type Error = std::convert::Infallible;

        async fn authenticate(&self, creds: Credentials) -> Result<Option<User>, Self::Error> {
            let given = digest(&creds.password);
            Ok(self
                .0
                .get(&creds.username)
                .filter(|user| user.password_digest == given)
                .cloned())
        }

        async fn get_user(&self, name: &UserId<Self>) -> Result<Option<User>, Self::Error> {
            Ok(self.0.get(name).cloned())
        }
    }

    type AuthSession = axum_login::AuthSession<Users>;

    async fn login(mut auth: AuthSession, Json(creds): Json<Credentials>) -> impl IntoResponse {
        let user = match auth.authenticate(creds).await {
            Ok(Some(user)) => user,
            Ok(None) => return (StatusCode::UNAUTHORIZED, "wrong user name or password"),
            Err(_) => return (StatusCode::SERVICE_UNAVAILABLE, "session store unavailable"),
        };
        // Cycles the session ID (session fixation) and stores the user.
        if auth.login(&user).await.is_err() {
            return (StatusCode::SERVICE_UNAVAILABLE, "session store unavailable");
        }
        (StatusCode::OK, "logged in")
    }

    async fn logout(mut auth: AuthSession) -> impl IntoResponse {
        match auth.logout().await {
            Ok(_) => (StatusCode::OK, "logged out"),
            Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "session store unavailable"),
        }
    }

    async fn protected(auth: AuthSession) -> String {
        let name = auth.user.map(|user| user.name).unwrap_or_default();
        format!("hello, {name}")
    }

    async fn me(auth: AuthSession) -> Json<Option<String>> {
        Json(auth.user.map(|user| user.name))
    }

    /// The application on `store`. Instances given stores on one Redis share
    /// their logins.
    pub fn app(store: RedisStore, secure_cookie: bool) -> Router {
        let sessions = SessionManagerLayer::new(store)
            .with_secure(secure_cookie)
            .with_expiry(Expiry::OnInactivity(Duration::hours(1)));
        let auth = AuthManagerLayerBuilder::new(Users::demo(), sessions).build();
        Router::new()
            .route("/protected", get(protected))
            .route_layer(login_required!(Users))
            .route("/me", get(me))
            .route("/login", post(login))
            .route("/logout", post(logout))
            .route("/health", get(|| async { "up" }))
            .layer(auth)
    }
}

#[cfg(all(feature = "redis", feature = "tower-sessions-014"))]
pub use app::app;

#[cfg(all(feature = "redis", feature = "tower-sessions-014"))]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let listen = std::env::var("UNSTUCK_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let url = std::env::var("UNSTUCK_STORE").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let secure = std::env::var("UNSTUCK_COOKIE_SECURE").as_deref() != Ok("0");
    let store = unstuck::RedisStore::connect(&url).await?;
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    tracing::info!(address = %listener.local_addr()?, "listening");
    axum::serve(listener, app(store, secure)).await?;
    Ok(())
}

#[cfg(not(all(feature = "redis", feature = "tower-sessions-014")))]
fn main() {
    eprintln!(
        "this example needs two features: cargo run --example axum_login --features redis,tower-sessions-014"
    );
    std::process::exit(2);
}
