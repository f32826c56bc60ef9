//! The route table and a segment matcher: small, explicit, and the single source the OpenAPI
//! test checks against.

use http::Method;

/// What a matched request is for; `mod.rs` dispatches on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteId {
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
    ListDeployments,
    CreateDeployment,
    GetDeployment,
    PatchDeployment,
    DeleteDeployment,
    SetDeploymentStatus,
    UploadCohort,
    StreamCohort,
    ListCohorts,
    GetCohort,
    ListConnections,
    PutConnection,
    GetConnection,
    DeleteConnection,
    ListAppVersions,
    PutAppVersion,
    GetAppVersion,
    DeleteAppVersion,
    SetSplit,
    GetSplit,
    SetSplitScoped,
    GetSplitScoped,
    ListCalls,
    GetCall,
    HangUpCall,
    DeploymentEvents,
    WorkspaceEvents,
}

/// One routed method + path pattern (`{name}` segments capture).
#[derive(Debug, Clone)]
pub struct Route {
    pub method: Method,
    pub pattern: &'static str,
    pub id: RouteId,
    /// Whether the route needs an API key (health, metrics and the spec do not).
    pub authenticated: bool,
}

const fn route(method: Method, pattern: &'static str, id: RouteId) -> Route {
    Route {
        method,
        pattern,
        id,
        authenticated: true,
    }
}

const fn open(pattern: &'static str, id: RouteId) -> Route {
    Route {
        method: Method::GET,
        pattern,
        id,
        authenticated: false,
    }
}

/// Every route. Literal segments win over captures because matching takes the first route in
/// this order whose pattern and method match.
pub const ROUTES: &[Route] = &[
    open("/healthz", RouteId::Healthz),
    open("/readyz", RouteId::Readyz),
    open("/metrics", RouteId::Metrics),
    open("/openapi.json", RouteId::OpenApi),
    route(Method::GET, "/v1/orgs/{org_id}/workspaces/{workspace_id}/deployments", RouteId::ListDeployments),
    route(Method::POST, "/v1/orgs/{org_id}/workspaces/{workspace_id}/deployments", RouteId::CreateDeployment),
    route(Method::GET, "/v1/orgs/{org_id}/workspaces/{workspace_id}/deployments/{deployment_id}", RouteId::GetDeployment),
    route(Method::PATCH, "/v1/orgs/{org_id}/workspaces/{workspace_id}/deployments/{deployment_id}", RouteId::PatchDeployment),
    route(Method::DELETE, "/v1/orgs/{org_id}/workspaces/{workspace_id}/deployments/{deployment_id}", RouteId::DeleteDeployment),
    route(Method::PUT, "/v1/orgs/{org_id}/workspaces/{workspace_id}/deployments/{deployment_id}/status", RouteId::SetDeploymentStatus),
    route(Method::POST, "/v1/orgs/{org_id}/workspaces/{workspace_id}/deployments/{deployment_id}/cohorts/upload", RouteId::UploadCohort),
    route(Method::POST, "/v1/orgs/{org_id}/workspaces/{workspace_id}/deployments/{deployment_id}/cohorts/stream", RouteId::StreamCohort),
    route(Method::GET, "/v1/orgs/{org_id}/workspaces/{workspace_id}/deployments/{deployment_id}/cohorts", RouteId::ListCohorts),
    route(Method::GET, "/v1/orgs/{org_id}/workspaces/{workspace_id}/deployments/{deployment_id}/cohorts/{cohort_id}", RouteId::GetCohort),
    route(Method::GET, "/v1/orgs/{org_id}/workspaces/{workspace_id}/deployments/{deployment_id}/events", RouteId::DeploymentEvents),
    route(Method::GET, "/v1/orgs/{org_id}/workspaces/{workspace_id}/events", RouteId::WorkspaceEvents),
    route(Method::GET, "/v1/orgs/{org_id}/workspaces/{workspace_id}/calls", RouteId::ListCalls),
    route(Method::GET, "/v1/orgs/{org_id}/workspaces/{workspace_id}/calls/{call_sid}", RouteId::GetCall),
    route(Method::DELETE, "/v1/orgs/{org_id}/workspaces/{workspace_id}/calls/{call_sid}", RouteId::HangUpCall),
    route(Method::GET, "/v1/orgs/{org_id}/workspaces/{workspace_id}/connections", RouteId::ListConnections),
    route(Method::PUT, "/v1/orgs/{org_id}/workspaces/{workspace_id}/connections/{connection_id}", RouteId::PutConnection),
    route(Method::GET, "/v1/orgs/{org_id}/workspaces/{workspace_id}/connections/{connection_id}", RouteId::GetConnection),
    route(Method::DELETE, "/v1/orgs/{org_id}/workspaces/{workspace_id}/connections/{connection_id}", RouteId::DeleteConnection),
    route(Method::GET, "/v1/orgs/{org_id}/workspaces/{workspace_id}/apps/{app_id}/versions", RouteId::ListAppVersions),
    route(Method::PUT, "/v1/orgs/{org_id}/workspaces/{workspace_id}/apps/{app_id}/versions/{version}", RouteId::PutAppVersion),
    route(Method::GET, "/v1/orgs/{org_id}/workspaces/{workspace_id}/apps/{app_id}/versions/{version}", RouteId::GetAppVersion),
    route(Method::DELETE, "/v1/orgs/{org_id}/workspaces/{workspace_id}/apps/{app_id}/versions/{version}", RouteId::DeleteAppVersion),
    route(Method::POST, "/v1/convai/agents/{agent_id}/deployments", RouteId::SetSplit),
    route(Method::GET, "/v1/convai/agents/{agent_id}/deployments", RouteId::GetSplit),
    route(Method::POST, "/v1/orgs/{org_id}/workspaces/{workspace_id}/convai/agents/{agent_id}/deployments", RouteId::SetSplitScoped),
    route(Method::GET, "/v1/orgs/{org_id}/workspaces/{workspace_id}/convai/agents/{agent_id}/deployments", RouteId::GetSplitScoped),
];

/// Path parameters captured by a match, in pattern order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Params(Vec<(&'static str, String)>);

impl Params {
    /// The captured value of `{name}`; empty when the pattern has no such capture.
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// The outcome of matching a request line.
#[derive(Debug)]
pub enum Match {
    Found(&'static Route, Params),
    /// The path exists with these other methods.
    WrongMethod(Vec<Method>),
    NotFound,
}

/// Finds the route for `method` and `path` (`HEAD` is not routed: the API has no cacheable
/// resources worth it).
pub fn find(method: &Method, path: &str) -> Match {
    let mut allowed = Vec::new();
    for r in ROUTES {
        let Some(params) = match_pattern(r.pattern, path) else {
            continue;
        };
        if r.method == *method {
            return Match::Found(r, params);
        }
        if !allowed.contains(&r.method) {
            allowed.push(r.method.clone());
        }
    }
    match allowed.is_empty() {
        true => Match::NotFound,
        false => Match::WrongMethod(allowed),
    }
}

/// Matches `path` against `pattern` segment by segment; captures are percent-decoded and must
/// be non-empty.
fn match_pattern(pattern: &'static str, path: &str) -> Option<Params> {
    let mut params = Vec::new();
    let mut pat = pattern.split('/');
    let mut segs = path.split('/');
    loop {
        match (pat.next(), segs.next()) {
            (None, None) => return Some(Params(params)),
            (Some(p), Some(s)) => {
                if let Some(name) = p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    if s.is_empty() {
                        return None;
                    }
                    params.push((name, percent_decode(s)?));
                } else if p != s {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

/// Decodes `%XX` escapes; `None` for a malformed escape or non-UTF-8 result (no route matches).
pub fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_segments_win_and_captures_are_decoded() {
        let Match::Found(r, p) = find(
            &Method::POST,
            "/v1/orgs/o%201/workspaces/w/deployments/dep-1/cohorts/upload",
        ) else {
            panic!("no match")
        };
        assert_eq!(r.id, RouteId::UploadCohort);
        assert_eq!(p.get("org_id"), "o 1");
        assert_eq!(p.get("deployment_id"), "dep-1");
        let Match::Found(r, p) = find(
            &Method::GET,
            "/v1/orgs/o/workspaces/w/deployments/d/cohorts/c1",
        ) else {
            panic!("no match")
        };
        assert_eq!((r.id, p.get("cohort_id")), (RouteId::GetCohort, "c1"));
    }

    #[test]
    fn wrong_method_lists_the_allowed_ones_and_unknown_paths_are_not_found() {
        match find(&Method::PUT, "/v1/orgs/o/workspaces/w/deployments") {
            Match::WrongMethod(m) => assert_eq!(m, [Method::GET, Method::POST]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            find(&Method::GET, "/v1/orgs/o/workspaces/w/nothing"),
            Match::NotFound
        ));
        assert!(matches!(
            find(&Method::GET, "/v1/orgs//workspaces/w/deployments"),
            Match::NotFound
        ));
        assert!(matches!(
            find(&Method::GET, "/v1/orgs/o/workspaces/w/deployments/"),
            Match::NotFound
        ));
        assert!(matches!(
            find(&Method::GET, "/v1/orgs/%zz/workspaces/w/deployments"),
            Match::NotFound
        ));
    }
}
