//! Parsing of the store URLs [`RedisStore::connect`](super::RedisStore::connect) accepts.

/// Where the store connects, as read from its URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// `redis://` or `rediss://`: handed to redis-rs unchanged.
    Standalone(String),
    /// `redis+sentinel://host:port,host:port/MASTER_NAME[/db]`.
    Sentinel {
        /// One `redis://host:port` URL per sentinel.
        sentinels: Vec<String>,
        master_name: String,
        db: i64,
    },
    /// `redis+cluster://host:port,host:port`: seed nodes.
    Cluster {
        /// One `redis://host:port` URL per seed node.
        nodes: Vec<String>,
    },
}

use crate::error::ConfigError;

pub(super) fn parse(url: &str) -> Result<Target, ConfigError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or(ConfigError::StoreUrl("expected scheme://…"))?;
    match scheme {
        "redis" | "rediss" => Ok(Target::Standalone(url.to_owned())),
        "redis+sentinel" => {
            let (hosts, path) = rest.split_once('/').ok_or(ConfigError::StoreUrl(
                "expected redis+sentinel://host:port,…/MASTER_NAME",
            ))?;
            let path = path.split(['?', '#']).next().unwrap_or_default();
            let (master_name, db) = match path.split_once('/') {
                Some((name, db)) => (
                    name,
                    db.parse().map_err(|_| {
                        ConfigError::StoreUrl("the database after the master name must be a number")
                    })?,
                ),
                None => (path, 0),
            };
            if master_name.is_empty() {
                return Err(ConfigError::StoreUrl("the sentinel URL names no master"));
            }
            Ok(Target::Sentinel {
                sentinels: node_urls(hosts)?,
                master_name: master_name.to_owned(),
                db,
            })
        }
        "redis+cluster" => {
            let hosts = rest.split(['/', '?', '#']).next().unwrap_or_default();
            Ok(Target::Cluster {
                nodes: node_urls(hosts)?,
            })
        }
        _ => Err(ConfigError::StoreUrl(
            "the scheme must be redis, rediss, redis+sentinel or redis+cluster",
        )),
    }
}

/// Splits `host:port,host:port` into `redis://` URLs. Credentials are refused
/// rather than silently dropped: for authentication or TLS, build the pool
/// yourself and use a `from_*_pool` constructor.
fn node_urls(hosts: &str) -> Result<Vec<String>, ConfigError> {
    if hosts.contains('@') {
        return Err(ConfigError::StoreUrl(
            "credentials are not supported in sentinel/cluster URLs; build the pool yourself",
        ));
    }
    let nodes: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{h}"))
        .collect();
    if nodes.is_empty() {
        return Err(ConfigError::StoreUrl("the URL lists no host"));
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standalone_urls_pass_through() {
        assert_eq!(
            parse("redis://127.0.0.1:6379/2").unwrap(),
            Target::Standalone("redis://127.0.0.1:6379/2".into())
        );
    }

    #[test]
    fn sentinel_urls_list_sentinels_and_name_the_master() {
        assert_eq!(
            parse("redis+sentinel://a:26379,b:26380/mymaster").unwrap(),
            Target::Sentinel {
                sentinels: vec!["redis://a:26379".into(), "redis://b:26380".into()],
                master_name: "mymaster".into(),
                db: 0,
            }
        );
        assert_eq!(
            parse("redis+sentinel://a:1/m/3").unwrap(),
            Target::Sentinel {
                sentinels: vec!["redis://a:1".into()],
                master_name: "m".into(),
                db: 3,
            }
        );
        assert!(parse("redis+sentinel://a:1").is_err());
        assert!(parse("redis+sentinel://a:1/").is_err());
        assert!(parse("redis+sentinel://a:1/m/x").is_err());
    }

    #[test]
    fn cluster_urls_list_seed_nodes() {
        assert_eq!(
            parse("redis+cluster://a:7000,b:7001").unwrap(),
            Target::Cluster {
                nodes: vec!["redis://a:7000".into(), "redis://b:7001".into()],
            }
        );
        assert!(parse("redis+cluster://").is_err());
    }

    #[test]
    fn unknown_schemes_and_credentials_are_refused_without_echoing_the_url() {
        let err = parse("memcached://secret@host").unwrap_err();
        assert!(!err.to_string().contains("secret"));
        let err = parse("redis+cluster://user:secret@a:1").unwrap_err();
        assert!(!err.to_string().contains("secret"));
    }
}
