//! The demo server contract on PostgreSQL, with several demo instances sharing
//! one database.
#![cfg(feature = "postgres")]

mod common;

common::demo_contract::demo_contract!(shared common::postgres_server::shared().url.clone());

#[tokio::test]
async fn a_row_rewritten_raw_in_todays_format_works_through_the_demo() {
    use sqlx::Row as _;
    let url = common::postgres_server::shared().url.clone();
    let demo = common::demo::Demo::start(&[("UNSTUCK_STORE", &url)]);
    let (mut client, key) =
        common::demo_contract::logged_in_with_a_value(&demo, serde_json::json!({"a": [1, 2]}))
            .await;
    let user = client.get("/me").await.body["user"].clone();

    // Replace the row by one written as releases before formats wrote it:
    // their columns only (`format` stays NULL).
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let row = sqlx::query(
        "DELETE FROM unstuck_sessions WHERE storage_key = $1 \
         RETURNING data::text AS data, user_id, created_at_ms, expires_at_ms",
    )
    .bind(&key)
    .fetch_one(&pool)
    .await
    .unwrap();
    let data: String = row.get("data");
    sqlx::query(
        "INSERT INTO unstuck_sessions (storage_key, data, user_id, created_at_ms, expires_at_ms) \
         VALUES ($1, $2::jsonb, $3, $4, $5)",
    )
    .bind(&key)
    .bind(&data)
    .bind(row.get::<String, _>("user_id"))
    .bind(row.get::<i64, _>("created_at_ms"))
    .bind(row.get::<i64, _>("expires_at_ms"))
    .execute(&pool)
    .await
    .unwrap();

    let session = client.get("/session").await;
    assert_eq!(session.status, 200, "{session:?}");
    assert_eq!(
        session.body["data"]["note"],
        serde_json::json!({"a": [1, 2]})
    );
    assert_eq!(session.body["user"], user);
    assert_eq!(
        client.put("/kv/more", serde_json::json!(1)).await.status,
        200
    );

    // A row from a newer release is a clear error, never misread.
    sqlx::query("UPDATE unstuck_sessions SET format = 2 WHERE storage_key = $1")
        .bind(&key)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(client.get("/session").await.status, 500);
    assert_eq!(
        client.put("/kv/other", serde_json::json!(1)).await.status,
        500
    );
}
