//! In-process: a created user gets an invitation and no key, the token is in no outbox row
//! and only hashed in `invitations`; accepting it without a key answers the key once (a
//! second acceptance, an unknown, missing or expired token: 422 `token`; six racing
//! acceptances of one token: one key; accepted before its welcome is recorded as sent, the
//! logged copy of the token is blanked all the same); `GET /v1/keys` lists every key to an admin and one's
//! own to others, never a secret; a non-admin revokes nobody else's key and nobody rotates
//! another's (403); a rotation answers a new secret and the old key is 401 at once, as is a
//! revoked one; the last admin key is not revoked (409). An `Idempotency-Key` replays only
//! to its user and only after the role check (a manager is 403, another accountant's same
//! key runs their own command, a different body under someone else's key is no 409; a
//! pre-upgrade key is 409); eight identical keyed requests at once create one invoice and
//! answer it eight times in the same bytes, locking no row of their organization, and a
//! retry whose command would now fail answers the first response's bytes. A key revoked in the database by another
//! process is refused here within the key cache's time to live. Salaries and the
//! notification log: 403 naming the role for managers, approvers and CFOs, 200 for admin
//! and accountant; a salary's ledger entry is listed to admin and accountant and to nobody
//! else

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

/// A user created by an administrator and the key they got by accepting their invitation.
pub struct Invited {
    pub id: Uuid,
    pub api: Api,
    /// The `UserCreated` event's id (`consistency_token` of the creation).
    pub token: String,
    pub key_id: Uuid,
}

/// The raw invitation token of `user_id`, from the short-lived row meant for the notifier.
/// Only tests read it there; the invited person reads it in their welcome email.
pub async fn invitation_token(db: &TestDb, user_id: Uuid) -> String {
    sqlx::query_scalar(
        "select e.token from invitation_emails e join invitations i on i.id = e.invitation_id
          where i.user_id = $1",
    )
    .bind(user_id)
    .fetch_one(&db.pool)
    .await
    .expect("the invitation's token waiting for its email")
}

/// `POST /v1/invitations/accept` without any key.
pub async fn accept_invitation(base: &str, body: Value) -> Reply {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/invitations/accept"))
        .json(&body)
        .send()
        .await
        .expect("HTTP request");
    Reply::read(response).await.expect("body")
}

/// `POST /v1/users` as `admin`, answered 201: the new user's id and the answer.
pub async fn create_user(admin: &Api, email: &str, name: &str, role: &str) -> (Uuid, Reply) {
    let r = admin
        .post(
            "/v1/users",
            json!({"email": email, "name": name, "role": role}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id: Uuid = r.body["user_id"].as_str().unwrap().parse().unwrap();
    (id, r)
}

/// Creates a user as `admin` (the answer holds an invitation and no key) and accepts the
/// invitation with the token from the database.
pub async fn invite(db: &TestDb, admin: &Api, email: &str, name: &str, role: &str) -> Invited {
    let (id, r) = create_user(admin, email, name, role).await;
    assert_eq!(r.body["role"], role, "{}", r.body);
    // The administrator holds no secret of the new user.
    assert!(r.body.get("api_key").is_none(), "{}", r.body);
    let text = r.body.to_string();
    assert!(!text.contains("dhm_") && !text.contains("dhi_"), "{text}");
    assert!(
        r.body["invitation"]["invitation_id"].is_string(),
        "{}",
        r.body
    );
    assert_eq!(r.body["invitation"]["delivery"], "email", "{}", r.body);
    let secret = invitation_token(db, id).await;
    let accepted = accept_invitation(&admin.base, json!({ "token": secret })).await;
    assert_eq!(accepted.status, 201, "{}", accepted.body);
    assert_eq!(accepted.body["user_id"], json!(id), "{}", accepted.body);
    assert_eq!(accepted.body["role"], role, "{}", accepted.body);
    Invited {
        id,
        api: Api::new(&admin.base, accepted.body["api_key"].as_str().unwrap()),
        token: r.body["consistency_token"].as_str().unwrap().to_string(),
        key_id: accepted.body["key_id"].as_str().unwrap().parse().unwrap(),
    }
}

/// A POST with an `Idempotency-Key`.
async fn post_keyed(api: &Api, path: &str, key: &str, body: Value) -> Reply {
    api.send(
        api.http
            .post(format!("{}{path}", api.base))
            .header("idempotency-key", key)
            .json(&body),
    )
    .await
}

/// A 403 naming `Authorization` and the caller's role.
fn assert_forbidden(reply: &Reply, role: &str) {
    assert_refused(reply, 403, "Authorization");
    let message = reply.body["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("role {role}")),
        "{role}: {}",
        reply.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_user_gets_an_invitation_and_only_its_token_gets_the_key_once() {
    let db = TestDb::new().await;
    let base = serve_api(&db).await;
    let admin = Api::new(&base, &org_key(&db, "Lotus Towers").await);

    let (user_id, r) = create_user(&admin, "mgr@lotus.example", "Meera", "manager").await;
    assert!(
        r.body.get("api_key").is_none(),
        "no key for the admin: {}",
        r.body
    );
    assert!(!r.body.to_string().contains("dhm_"), "{}", r.body);
    let invitation = &r.body["invitation"];
    let expires: chrono::DateTime<chrono::Utc> =
        invitation["expires_at"].as_str().unwrap().parse().unwrap();
    let days = (expires - chrono::Utc::now()).num_hours();
    assert!((167..=168).contains(&days), "{}", r.body);
    // The user has no key yet.
    assert_eq!(
        db.count(&format!(
            "select count(*) from api_keys where user_id = '{user_id}'"
        ))
        .await,
        0
    );

    // The token is not in the event (nor anywhere in the outbox); only its hash is kept
    // with the invitation.
    let secret = invitation_token(&db, user_id).await;
    assert!(secret.starts_with("dhi_") && secret.len() == 68, "{secret}");
    assert_eq!(
        db.count(&format!(
            "select count(*) from outbox where payload::text like '%{secret}%' \
             or position(convert_to('{secret}', 'UTF8') in coalesce(raw_value, '')) > 0"
        ))
        .await,
        0
    );
    assert_eq!(
        db.count(&format!(
            "select count(*) from invitations where user_id = '{user_id}' \
             and token_hash = sha256(convert_to('{secret}', 'UTF8'))"
        ))
        .await,
        1
    );

    // Accepted without any key: the user's first key, once.
    let r = accept_invitation(&base, json!({ "token": secret })).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["user_id"], json!(user_id), "{}", r.body);
    assert_eq!(r.body["role"], "manager", "{}", r.body);
    assert_eq!(r.body["invitation_id"], invitation["invitation_id"]);
    let manager = Api::new(&base, r.body["api_key"].as_str().unwrap());
    assert!(manager.key.starts_with("dhm_"), "{}", r.body);
    let mine = manager.get("/v1/keys").await;
    assert_eq!(mine.status, 200, "{}", mine.body);
    assert_eq!(mine.body["keys"].as_array().unwrap().len(), 1);
    assert_eq!(mine.body["keys"][0]["user_id"], json!(user_id));
    // Its row for the notifier is gone with the acceptance; a second acceptance is refused.
    assert_eq!(db.count("select count(*) from invitation_emails").await, 0);
    let again = accept_invitation(&base, json!({ "token": secret })).await;
    assert_refused(&again, 422, "token");
    assert!(
        again.body["message"]
            .as_str()
            .unwrap()
            .contains("already accepted"),
        "{}",
        again.body
    );
    assert_eq!(
        db.count(&format!(
            "select count(*) from api_keys where user_id = '{user_id}'"
        ))
        .await,
        1
    );

    // Bad tokens, by name.
    for body in [
        json!({"token": "dhi_0000"}),
        json!({}),
        json!({"token": " "}),
        json!({"token": 7}),
    ] {
        let r = accept_invitation(&base, body).await;
        assert_refused(&r, 422, "token");
    }
    let r = accept_invitation(&base, json!({"token": "x", "role": "admin"})).await;
    assert_refused(&r, 422, "role");
    // An expired invitation yields nothing.
    let r = admin
        .post(
            "/v1/users",
            json!({"email": "late@lotus.example", "name": "Late", "role": "cfo"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let late: Uuid = r.body["user_id"].as_str().unwrap().parse().unwrap();
    let late_secret = invitation_token(&db, late).await;
    sqlx::query(
        "update invitations set created_at = now() - interval '8 days',
                expires_at = now() - interval '1 day' where user_id = $1",
    )
    .bind(late)
    .execute(&db.pool)
    .await
    .unwrap();
    let r = accept_invitation(&base, json!({ "token": late_secret })).await;
    assert_refused(&r, 422, "token");
    assert!(
        r.body["message"].as_str().unwrap().contains("expired"),
        "{}",
        r.body
    );

    // Acceptances racing for one token: one key.
    let r = admin
        .post(
            "/v1/users",
            json!({"email": "race@lotus.example", "name": "Race", "role": "approver"}),
        )
        .await;
    let racer: Uuid = r.body["user_id"].as_str().unwrap().parse().unwrap();
    let racer_secret = invitation_token(&db, racer).await;
    let replies = futures_util::future::join_all(
        (0..6).map(|_| accept_invitation(&base, json!({ "token": racer_secret }))),
    )
    .await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 422).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        db.count(&format!(
            "select count(*) from api_keys where user_id = '{racer}'"
        ))
        .await,
        1
    );

    // Only an administrator creates users (and so invitations).
    let r = manager
        .post(
            "/v1/users",
            json!({"email": "x@lotus.example", "name": "X", "role": "cfo"}),
        )
        .await;
    assert_forbidden(&r, "manager");
    db.drop_db().await;
}

/// The invited person may read the welcome and accept before the notifier has recorded it
/// as sent: the delivery log's copy of the token is blanked by the acceptance then (the
/// recording finds the token gone and blanks nothing), and recording it sent afterwards
/// changes nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invitation_accepted_before_its_email_is_recorded_sent_leaves_no_token_logged() {
    let db = TestDb::new().await;
    let base = serve_api(&db).await;
    let admin = Api::new(&base, &org_key(&db, "Lotus Towers").await);
    let (id, _) = create_user(&admin, "fast@lotus.example", "Farhan", "cfo").await;
    let secret = invitation_token(&db, id).await;
    // The welcome as the notifier logs it while it sends: the token in both bodies.
    sqlx::query(
        "insert into notification_deliveries
             (event_id, recipient, template, organization_id, correlation_id, event_type,
              source_topic, message_id, subject, body_text, body_html, status)
         select e.event_id, 'fast@lotus.example', 'welcome', i.organization_id, 'c',
                'UserCreated', 't', 'm', 'Welcome', 'Your code: ' || e.token,
                '<p>' || e.token || '</p>', 'sending'
           from invitation_emails e join invitations i on i.id = e.invitation_id
          where i.user_id = $1",
    )
    .bind(id)
    .execute(&db.pool)
    .await
    .unwrap();
    let logged = "select body_text || ' ' || body_html from notification_deliveries";
    let body = || async {
        sqlx::query_scalar::<_, String>(logged)
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };
    assert!(body().await.contains(&secret));

    let accepted = accept_invitation(&base, json!({ "token": secret })).await;
    assert_eq!(accepted.status, 201, "{}", accepted.body);
    assert_eq!(
        body().await,
        "Your code: [removed once sent] <p>[removed once sent]</p>"
    );
    assert_eq!(db.count("select count(*) from invitation_emails").await, 0);
    sqlx::query("update notification_deliveries set status = 'sent', sent_at = now()")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        body().await,
        "Your code: [removed once sent] <p>[removed once sent]</p>"
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_listed_without_secrets_revoked_at_once_and_rotated_by_their_owner() {
    let db = TestDb::new().await;
    let base = serve_api(&db).await;
    let admin = Api::new(&base, &org_key(&db, "Lotus Towers").await);
    let other = Api::new(&base, &org_key(&db, "Cedar Heights").await);
    let manager = invite(&db, &admin, "mgr@lotus.example", "Meera", "manager").await;
    let accountant = invite(&db, &admin, "acc@lotus.example", "Asha", "accountant").await;

    // An administrator sees every key of the organization, nobody's secret.
    let r = admin.get("/v1/keys").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let keys = r.body["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 3, "{}", r.body);
    let text = r.body.to_string();
    for secret in [&admin.key, &manager.api.key, &accountant.api.key] {
        assert!(!text.contains(secret.as_str()), "{text}");
    }
    assert!(
        !text.contains("dhm_") && !text.contains("key_hash"),
        "{text}"
    );
    let admin_key: Uuid = keys
        .iter()
        .find(|k| k["role"] == "admin")
        .map(|k| k["key_id"].as_str().unwrap().parse().unwrap())
        .unwrap();
    let listed = |id: Uuid| keys.iter().find(|k| k["key_id"] == json!(id)).unwrap();
    assert_eq!(listed(manager.key_id)["user_id"], json!(manager.id));
    assert_eq!(listed(manager.key_id)["user_email"], "mgr@lotus.example");
    assert_eq!(listed(manager.key_id)["revoked_at"], Value::Null);
    // The administrator's key was just used; the manager's never yet.
    assert!(listed(admin_key)["last_used_at"].is_string(), "{text}");
    assert_eq!(listed(manager.key_id)["last_used_at"], Value::Null);
    // Anyone else sees their own keys only; another organization none of ours.
    let r = manager.api.get("/v1/keys").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let own = r.body["keys"].as_array().unwrap();
    assert_eq!(own.len(), 1, "{}", r.body);
    assert_eq!(own[0]["key_id"], json!(manager.key_id));
    assert!(own[0]["last_used_at"].is_string(), "{}", r.body);
    let r = other.get("/v1/keys").await;
    assert_eq!(r.body["keys"].as_array().unwrap().len(), 1, "{}", r.body);
    for verb in ["revoke", "rotate"] {
        let r = other
            .post(&format!("/v1/keys/{}/{verb}", manager.key_id), json!({}))
            .await;
        assert_eq!(r.status, 404, "{}", r.body);
    }
    let r = admin.post("/v1/keys/not-a-key/revoke", json!({})).await;
    assert_eq!(r.status, 404, "{}", r.body);

    // A non-administrator revokes no one else's key; nobody rotates another's key, an
    // administrator included (the new secret would be theirs).
    let r = manager
        .api
        .post(&format!("/v1/keys/{}/revoke", accountant.key_id), json!({}))
        .await;
    assert_forbidden(&r, "manager");
    for (who, key) in [(&manager.api, accountant.key_id), (&admin, manager.key_id)] {
        let r = who.post(&format!("/v1/keys/{key}/rotate"), json!({})).await;
        assert_refused(&r, 403, "Authorization");
        assert!(
            r.body["message"].as_str().unwrap().contains("owner"),
            "{}",
            r.body
        );
    }
    assert_eq!(accountant.api.get("/v1/keys").await.status, 200);

    // The owner rotates: a new secret, once; the old key is revoked in the same step.
    let r = accountant
        .api
        .post(&format!("/v1/keys/{}/rotate", accountant.key_id), json!({}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        r.body["rotated_from"],
        json!(accountant.key_id),
        "{}",
        r.body
    );
    assert_eq!(r.body["role"], "accountant", "{}", r.body);
    assert_eq!(r.body["user_id"], json!(accountant.id), "{}", r.body);
    let rotated = Api::new(&base, r.body["api_key"].as_str().unwrap());
    let rotated_id: Uuid = r.body["key_id"].as_str().unwrap().parse().unwrap();
    assert_ne!(rotated.key, accountant.api.key);
    assert_refused(&accountant.api.get("/v1/keys").await, 401, "Authorization");
    let r = rotated.get("/v1/keys").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let own = r.body["keys"].as_array().unwrap();
    assert_eq!(own.len(), 2, "{}", r.body);
    assert!(own[0]["revoked_at"].is_string(), "{}", r.body);
    assert_eq!(own[1]["key_id"], json!(rotated_id), "{}", r.body);
    // A revoked key is rotated no more.
    let r = rotated
        .post(&format!("/v1/keys/{}/rotate", accountant.key_id), json!({}))
        .await;
    assert_eq!(r.status, 409, "{}", r.body);

    // An administrator revokes the manager's key: 401 from the next request on.
    let r = admin
        .post(&format!("/v1/keys/{}/revoke", manager.key_id), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let revoked_at = r.body["revoked_at"].clone();
    assert!(revoked_at.is_string(), "{}", r.body);
    assert_refused(&manager.api.get("/v1/users").await, 401, "Authorization");
    let r = manager
        .api
        .post(&format!("/v1/keys/{}/rotate", manager.key_id), json!({}))
        .await;
    assert_refused(&r, 401, "Authorization");
    // Revoking it again changes nothing.
    let r = admin
        .post(&format!("/v1/keys/{}/revoke", manager.key_id), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["revoked_at"], revoked_at, "{}", r.body);

    // An owner revokes their own key.
    let r = rotated
        .post(&format!("/v1/keys/{rotated_id}/revoke"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_refused(&rotated.get("/v1/keys").await, 401, "Authorization");

    // The organization's last administrator key stays; rotating it works.
    let r = admin
        .post(&format!("/v1/keys/{admin_key}/revoke"), json!({}))
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(admin.get("/v1/keys").await.status, 200);
    let r = admin
        .post(&format!("/v1/keys/{admin_key}/rotate"), json!({}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let admin2 = Api::new(&base, r.body["api_key"].as_str().unwrap());
    assert_refused(&admin.get("/v1/keys").await, 401, "Authorization");
    let r = admin2.get("/v1/keys").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let active = r.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["revoked_at"].is_null())
        .count();
    assert_eq!(active, 1, "{}", r.body);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_its_users_own_and_replays_only_after_the_role_check() {
    let db = TestDb::new().await;
    let base = serve_api(&db).await;
    let admin = Api::new(&base, &org_key(&db, "Lotus Towers").await);
    let manager = invite(&db, &admin, "mgr@lotus.example", "Meera", "manager").await;
    let accountant = invite(&db, &admin, "acc@lotus.example", "Asha", "accountant").await;
    let clerk = invite(&db, &admin, "clerk@lotus.example", "Ravi", "accountant").await;
    let body = json!({"name": "Nisha", "unit": "A-101", "email": "nisha@resident.example"});

    let first = post_keyed(&admin, "/v1/customers", "cust-1", body.clone()).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let retry = post_keyed(&admin, "/v1/customers", "cust-1", body.clone()).await;
    assert_eq!(retry.status, 201, "{}", retry.body);
    assert_eq!(
        retry.body, first.body,
        "the administrator's retry is replayed"
    );

    // A role that may not create customers is refused before any replay: the stored
    // answer (with the resident's address) is not shown to it.
    let r = post_keyed(&manager.api, "/v1/customers", "cust-1", body.clone()).await;
    assert_forbidden(&r, "manager");
    assert!(!r.body.to_string().contains("nisha@"), "{}", r.body);

    // Another user's same key is another key: no replay of the administrator's answer...
    let theirs = post_keyed(&accountant.api, "/v1/customers", "cust-1", body.clone()).await;
    assert_eq!(theirs.status, 201, "{}", theirs.body);
    assert_ne!(theirs.body["id"], first.body["id"], "{}", theirs.body);
    // ...and their own retry is theirs.
    let again = post_keyed(&accountant.api, "/v1/customers", "cust-1", body.clone()).await;
    assert_eq!(again.body, theirs.body);
    // No conflict with a different body under someone else's same key.
    let other_body = json!({"name": "Om", "unit": "B-202"});
    let r = post_keyed(&clerk.api, "/v1/customers", "cust-1", other_body.clone()).await;
    assert_eq!(r.status, 201, "{}", r.body);
    // The same user's same key with a different body still is.
    let r = post_keyed(&admin, "/v1/customers", "cust-1", other_body).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(
        db.count("select count(*) from customers").await,
        3,
        "the administrator's, the accountant's and the clerk's"
    );
    assert_eq!(
        db.count("select count(*) from idempotency_keys where idempotency_key = 'cust-1'")
            .await,
        3
    );

    // A key stored before keys had users (the nil user) is neither replayed nor run again.
    sqlx::query(
        "insert into idempotency_keys (organization_id, user_id, idempotency_key, request_hash,
                                       response_status, response_body)
         select organization_id, '00000000-0000-0000-0000-000000000000', 'before-upgrade',
                '\\x00', 201, '{}'
           from users where id = $1",
    )
    .bind(accountant.id)
    .execute(&db.pool)
    .await
    .unwrap();
    let r = post_keyed(
        &accountant.api,
        "/v1/customers",
        "before-upgrade",
        json!({"name": "Late"}),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(db.count("select count(*) from customers").await, 3);

    // An invoice records its key in the one statement that writes it: the same rules.
    let invoice = json!({"customer_id": theirs.body["id"], "amount": "1500.00",
                         "due_date": "2099-01-10"});
    let first = post_keyed(&accountant.api, "/v1/invoices", "inv-1", invoice.clone()).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let retry = post_keyed(&accountant.api, "/v1/invoices", "inv-1", invoice.clone()).await;
    assert_eq!((retry.status, &retry.body), (201, &first.body));
    let other = json!({"customer_id": theirs.body["id"], "amount": "9.00",
                       "due_date": "2099-01-10"});
    let r = post_keyed(&accountant.api, "/v1/invoices", "inv-1", other.clone()).await;
    assert_eq!(r.status, 409, "{}", r.body);
    let r = post_keyed(&manager.api, "/v1/invoices", "inv-1", invoice.clone()).await;
    assert_forbidden(&r, "manager");
    let r = post_keyed(&accountant.api, "/v1/invoices", "before-upgrade", other).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(db.count("select count(*) from invoices").await, 1);
    assert_eq!(
        db.count("select count(*) from outbox where payload->>'invoice_id' is not null")
            .await,
        2,
        "its InvoiceCreated and its first email, once"
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salaries_are_read_by_the_bookkeepers_only() {
    let db = TestDb::new().await;
    let base = serve_api(&db).await;
    let admin = Api::new(&base, &org_key(&db, "Lotus Towers").await);
    let accountant = invite(&db, &admin, "acc@lotus.example", "Asha", "accountant").await;
    let r = admin
        .post(
            "/v1/salaries",
            json!({"employee_id": Uuid::now_v7(), "employee_name": "Gopal", "period": "2026-11",
                   "amount": "18000", "employee_email": "gopal@staff.example"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let path = format!("/v1/salaries/{}", r.body["salary_id"].as_str().unwrap());
    // The salary's journal entry, as the ledger posts it (no ledger runs here).
    let salary_id: Uuid = r.body["salary_id"].as_str().unwrap().parse().unwrap();
    let organization_id: Uuid =
        sqlx::query_scalar("select organization_id from salaries where id = $1")
            .bind(salary_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let entry = Uuid::now_v7();
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query(
        "insert into journal_entries (id, organization_id, source_event_id, reference_type,
                reference_id, description, currency, occurred_at)
         values ($1, $2, $1, 'salary', $3, 'Salary 2026-11 Gopal', 'INR', now())",
    )
    .bind(entry)
    .bind(organization_id)
    .bind(salary_id)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "insert into postings (entry_id, organization_id, account_code, party_type, party_id, debit, credit)
         values ($1, $2, '5100', null, null, 18000, 0), ($1, $2, '2200', 'employee', $3, 0, 18000)",
    )
    .bind(entry)
    .bind(organization_id)
    .bind(Uuid::now_v7())
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let entries = format!("/v1/ledger/entries?reference_id={salary_id}");
    for reader in [&admin, &accountant.api] {
        let r = reader.get(&entries).await;
        assert_eq!(
            r.body["entries"].as_array().map(Vec::len),
            Some(1),
            "{}",
            r.body
        );
    }
    for reader in [&admin, &accountant.api] {
        let r = reader.get(&path).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["amount"], "18000.00", "{}", r.body);
        assert_eq!(
            r.body["employee_email"], "gopal@staff.example",
            "{}",
            r.body
        );
    }
    for (email, role) in [
        ("mgr@lotus.example", "manager"),
        ("apr@lotus.example", "approver"),
        ("cfo@lotus.example", "cfo"),
    ] {
        let user = invite(&db, &admin, email, role, role).await;
        let r = user.api.get(&path).await;
        assert_forbidden(&r, role);
        assert!(!r.body.to_string().contains("gopal"), "{}", r.body);
        // Nor through the delivery log, which names every payslip's address, nor through
        // the salary's ledger entry.
        assert_forbidden(&user.api.get("/v1/notifications").await, role);
        let r = user.api.get(&entries).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["entries"], json!([]), "{}", r.body);
    }
    assert_eq!(accountant.api.get("/v1/notifications").await.status, 200);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_requests_at_once_take_effect_once() {
    let db = TestDb::new().await;
    let base = serve_api(&db).await;
    let admin = Api::new(&base, &org_key(&db, "Lotus Towers").await);
    let nisha = admin.customer("Nisha").await;
    let events_before = command_events(&db).await;
    // The organization's row as its last locker or writer left it (`xmax`).
    let organization_row = || async {
        sqlx::query_scalar::<_, String>("select xmax::text from organizations")
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };
    let organization_before = organization_row().await;

    // Eight identical requests at once: every one answers the same invoice, one exists.
    let body = json!({"customer_id": nisha, "amount": "1500", "due_date": due_date()});
    let replies = futures_util::future::join_all(
        (0..8).map(|_| post_keyed(&admin, "/v1/invoices", "inv-at-once", body.clone())),
    )
    .await;
    for r in &replies {
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.text, replies[0].text);
    }
    assert_eq!(db.count("select count(*) from invoices").await, 1);
    // Recording the key locked no row of the organization: commands of one organization do
    // not all lock its one row.
    assert_eq!(organization_row().await, organization_before);
    assert_eq!(
        command_events(&db).await - events_before,
        2,
        "one InvoiceCreated and its first email"
    );

    // A retry whose command would now fail (its invoice number is taken, by the first)
    // answers the first response.
    let numbered = json!({"customer_id": nisha, "amount": "80", "due_date": due_date(),
                          "invoice_number": "LT-7"});
    let first = post_keyed(&admin, "/v1/invoices", "inv-numbered", numbered.clone()).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let retry = post_keyed(&admin, "/v1/invoices", "inv-numbered", numbered).await;
    assert_eq!(retry.status, 201, "{}", retry.body);
    // The same bytes: the response stored is the one answered.
    assert_eq!(retry.text, first.text);
    // Another body under the key is a conflict, whether its command would succeed or not.
    for other in [
        json!({"customer_id": nisha, "amount": "81", "due_date": due_date()}),
        json!({"customer_id": nisha, "amount": "81", "due_date": due_date(),
               "invoice_number": "LT-7"}),
    ] {
        let r = post_keyed(&admin, "/v1/invoices", "inv-numbered", other).await;
        assert_eq!(r.status, 409, "{}", r.body);
        assert!(
            r.body["message"]
                .as_str()
                .is_some_and(|m| m.contains("Idempotency-Key")),
            "{}",
            r.body
        );
    }
    assert_eq!(db.count("select count(*) from invoices").await, 2);
    assert_eq!(db.count("select count(*) from idempotency_keys").await, 2);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_by_another_process_is_refused_within_the_key_cache_time() {
    let db = TestDb::new().await;
    let base = serve_api(&db).await;
    let admin = Api::new(&base, &org_key(&db, "Lotus Towers").await);
    let accountant = invite(&db, &admin, "acc@lotus.example", "Asha", "accountant").await;
    assert_eq!(accountant.api.get("/v1/keys").await.status, 200);

    // Revoked in the database, as another API process's revocation would: this process
    // believed the key for at most its cache's time to live.
    sqlx::query("update api_keys set revoked_at = now() where id = $1")
        .bind(accountant.key_id)
        .execute(&db.pool)
        .await
        .unwrap();
    let revoked = std::time::Instant::now();
    let limit = dhanman_api::key_cache::DEFAULT_TTL + std::time::Duration::from_secs(4);
    loop {
        let r = accountant.api.get("/v1/keys").await;
        if r.status == 401 {
            assert_refused(&r, 401, "Authorization");
            break;
        }
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            revoked.elapsed() < limit,
            "the revoked key still works after {:?}",
            revoked.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The administrator's key, never revoked, still works.
    assert_eq!(admin.get("/v1/keys").await.status, 200);
    db.drop_db().await;
}
