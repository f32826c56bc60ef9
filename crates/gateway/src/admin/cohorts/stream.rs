//! `POST …/cohorts/stream`: up to a thousand users as JSON.

use super::mapping::OverrideField;
use super::*;

/// `POST …/cohorts/stream`: `{"name": …, "users": [{phone_number, user_identifier?,
/// app_variables?, app_overrides?}]}` with 1–1000 users. Bad phone numbers reject their row, as in
/// a CSV; anything structurally wrong is a 422.
pub async fn stream(cx: &Ctx, body: RequestBody) -> Result<Response<Body>, ApiError> {
    let scope = cx.scope()?;
    let deployment = deployments::load(cx, &scope).await?;
    let value = read_json(&cx.headers, body, cx.max_body()).await?;
    let root = body_loc();
    let mut p = Problems::default();
    let Some(map) = object(&value, &root, &mut p) else {
        return Err(finish_err(p));
    };
    deny_unknown(map, &["name", "users"], &root, &mut p);
    let name = required(map, "name", &root, &mut p).and_then(|v| {
        crate::admin::request::bounded_string(v, MAX_COHORT_NAME_CHARS, at(&root, "name"), &mut p)
    });
    let users_loc = at(&root, "users");
    let mut rows: Vec<Result<CohortMember, String>> = Vec::new();
    if let Some(users) =
        required(map, "users", &root, &mut p).and_then(|v| array(v, users_loc.clone(), &mut p))
    {
        if users.is_empty() || users.len() > MAX_STREAM_USERS {
            p.push(
                users_loc.clone(),
                if users.is_empty() {
                    "too_short"
                } else {
                    "too_long"
                },
                format!(
                    "List should have between 1 and {MAX_STREAM_USERS} items, not {}",
                    users.len()
                ),
            );
        } else {
            for (i, u) in users.iter().enumerate() {
                if let Some(row) = stream_user(u, cx.country_code(), at(&users_loc, i), &mut p) {
                    rows.push(row);
                }
            }
        }
    }
    p.finish()?;
    let mut ingest = Ingest::new(cx, scope, deployment.deployment_id, None);
    ingest.cohort.name = name.unwrap_or_default();
    let mut members = Vec::with_capacity(rows.len());
    for (i, row) in rows.into_iter().enumerate() {
        ingest.cohort.result.total_records += 1;
        match row {
            Ok(m) => {
                ingest.cohort.result.valid_records += 1;
                members.push(m);
            }
            Err(reason) => {
                ingest.cohort.result.rejected_records += 1;
                ingest.cohort.rejections.push(CohortRejection {
                    row: i as u64 + 1,
                    reason,
                });
            }
        }
    }
    ingest.cohort.status = CohortStatus::Completed;
    let state = &cx.state;
    let _write = state.write_lock().await;
    state
        .store
        .put_cohort(&ingest.scope, &ingest.cohort)
        .await?;
    if !members.is_empty() {
        let rows = members.len() as u64;
        state
            .store
            .insert_cohort_members(&ingest.scope, &ingest.cohort.deployment_id, &members)
            .await?;
        state
            .apply(&[Change::UpsertCohortMembers(
                ingest.scope.clone(),
                ingest.cohort.deployment_id.clone(),
                members,
            )])
            .await;
        state
            .metrics
            .cohort_rows
            .with_label_values(&["valid"])
            .inc_by(rows);
    }
    state
        .metrics
        .cohort_rows
        .with_label_values(&["rejected"])
        .inc_by(ingest.cohort.result.rejected_records);
    Ok(json_response(StatusCode::CREATED, &view(&ingest.cohort)))
}

/// One user of a stream request: structure problems go to `p`; a bad phone number is the row's
/// rejection reason.
pub(super) fn stream_user(
    v: &Value,
    country_code: Option<&str>,
    loc: Loc,
    p: &mut Problems,
) -> Option<Result<CohortMember, String>> {
    let m = object(v, &loc, p)?;
    deny_unknown(
        m,
        &[
            "phone_number",
            "user_identifier",
            "app_variables",
            "app_overrides",
        ],
        &loc,
        p,
    );
    let before = p.len();
    let phone =
        required(m, "phone_number", &loc, p).and_then(|v| string(v, at(&loc, "phone_number"), p));
    let user_identifier =
        optional(m, "user_identifier").and_then(|v| string(v, at(&loc, "user_identifier"), p));
    let mut app_variables = BTreeMap::new();
    if let Some(vars) =
        optional(m, "app_variables").and_then(|v| object(v, &at(&loc, "app_variables"), p))
    {
        for (k, v) in vars {
            match v {
                Value::String(s) => {
                    app_variables.insert(k.clone(), s.clone());
                }
                Value::Number(_) | Value::Bool(_) => {
                    app_variables.insert(k.clone(), v.to_string());
                }
                Value::Null => {}
                _ => p.push(
                    at(&at(&loc, "app_variables"), k.as_str()),
                    "string_type",
                    "Input should be a valid string",
                ),
            }
        }
    }
    let app_overrides =
        optional(m, "app_overrides").and_then(|v| overrides(v, at(&loc, "app_overrides"), p));
    if p.len() != before {
        return None;
    }
    let phone = phone?;
    Some(match normalize_number(phone, country_code) {
        Err(e) => Err(format!("invalid phone number {phone:?}: {e}")),
        Ok(e164) => {
            let phone_number = e164.to_string();
            Ok(CohortMember {
                user_identifier: user_identifier
                    .map_or_else(|| phone_number.clone(), str::to_owned),
                phone_number,
                app_variables,
                app_overrides: app_overrides.unwrap_or_default(),
            })
        }
    })
}

pub(super) fn overrides(v: &Value, loc: Loc, p: &mut Problems) -> Option<AppOverrides> {
    let m: &Map<String, Value> = object(v, &loc, p)?;
    let names: Vec<&str> = OverrideField::ALL.iter().map(|(n, _)| *n).collect();
    deny_unknown(m, &names, &loc, p);
    let mut o = AppOverrides::default();
    for (name, field) in OverrideField::ALL {
        if let Some(s) = optional(m, name).and_then(|v| string(v, at(&loc, name), p)) {
            field.set(&mut o, s.to_owned());
        }
    }
    Some(o)
}
