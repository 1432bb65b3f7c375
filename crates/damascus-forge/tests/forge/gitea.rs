//! The Gitea client against a server inside the test that speaks Gitea's API v1 over a
//! real bare repository: pull requests are rows the server keeps, a branch's head is
//! the real ref, a merge is a real merge commit on the base, and `mergeable` is whether
//! git can merge the head into the base. Like Gitea it lists newest first, at most 50 a
//! page; `GET …/pulls/{base}/{head}` returns the oldest match when there are several
//! (Gitea picks one without an order), and the server can play a Gitea without that
//! endpoint. It also plays 401, 403 and 5xx. A request without the token, or with
//! another one, is answered 401 as Gitea does and recorded, so each test asserts that
//! none was refused.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use damascus_forge::{
    Forge, ForgeError, GiteaForge, LocalForge, MergeOutcome, MergeStyle, PrState,
};
use damascus_git::{init_bare_with_files, Git, GitError, Identity};
use serde_json::{json, Value};

const BRANCH: &str = "damascus/web-1";

#[derive(Clone, Debug)]
struct Pull {
    number: i64,
    head: String,
    base: String,
    open: bool,
    merged: bool,
    merge_commit: Option<String>,
}

#[derive(Clone)]
struct FakeGitea {
    remote: PathBuf,
    pulls: Arc<Mutex<Vec<Pull>>>,
    /// Every request, as `METHOD /path?query`, the API prefix left out.
    seen: Arc<Mutex<Vec<String>>>,
    /// Merge requests' bodies.
    merges: Arc<Mutex<Vec<Value>>>,
    /// Comments: PR number and text.
    comments: Arc<Mutex<Vec<(i64, String)>>>,
    /// Plays a Gitea release without `GET …/pulls/{base}/{head}`.
    without_base_head: Arc<Mutex<bool>>,
    /// Reads of one PR (`GET …/pulls/{index}`) that still say `mergeable: false`
    /// because Gitea is checking it; a merge meanwhile is refused with a 405.
    checking: Arc<Mutex<u32>>,
    /// A status every request gets (401, 503, …), or 0.
    everything: Arc<Mutex<u16>>,
    /// Answers the next merges get instead of merging: status and Gitea's message.
    refuse_merge: Arc<Mutex<VecDeque<(u16, &'static str)>>>,
    /// Requests refused for their authentication: the `Authorization` headers sent.
    auth_failures: Arc<Mutex<Vec<String>>>,
}

impl FakeGitea {
    async fn new(dir: &Path) -> FakeGitea {
        let remote = dir.join("remote.git");
        init_bare_with_files(&remote, &[("a.txt", "one\n")], &Identity::default())
            .await
            .unwrap();
        FakeGitea {
            remote,
            pulls: Arc::default(),
            seen: Arc::default(),
            merges: Arc::default(),
            comments: Arc::default(),
            without_base_head: Arc::default(),
            checking: Arc::default(),
            everything: Arc::default(),
            refuse_merge: Arc::default(),
            auth_failures: Arc::default(),
        }
    }

    fn git(&self) -> Git {
        Git::new(&self.remote, Identity::default())
    }

    async fn head_of(&self, branch: &str) -> Option<String> {
        self.git()
            .resolve(&format!("refs/heads/{branch}"))
            .await
            .unwrap()
    }

    /// Whether git merges `head` into `base` without a conflict.
    async fn mergeable(&self, pull: &Pull) -> bool {
        let merge = ["merge-tree", "--write-tree", &pull.base, &pull.head];
        match self.git().run(&merge).await {
            Ok(_) => true,
            Err(GitError::Failed { code: Some(1), .. }) => false,
            Err(e) => panic!("git merge-tree: {e}"),
        }
    }

    fn add(&self, head: &str, base: &str, open: bool) -> i64 {
        let mut pulls = self.pulls.lock().unwrap();
        let number = pulls.len() as i64 + 1;
        pulls.push(Pull {
            number,
            head: head.into(),
            base: base.into(),
            open,
            merged: false,
            merge_commit: None,
        });
        number
    }

    fn pull(&self, number: i64) -> Option<Pull> {
        let pulls = self.pulls.lock().unwrap();
        pulls.iter().find(|p| p.number == number).cloned()
    }

    async fn json(&self, pull: &Pull, mergeable: bool) -> Value {
        let sha = self.head_of(&pull.head).await.unwrap_or_default();
        json!({
            "number": pull.number,
            "html_url": format!("https://gitea.test/acme/web/pulls/{}", pull.number),
            "state": if pull.open { "open" } else { "closed" },
            "merged": pull.merged,
            "mergeable": mergeable,
            "merge_commit_sha": pull.merge_commit,
            "head": { "ref": pull.head, "sha": sha },
            "base": { "ref": pull.base, "sha": self.head_of(&pull.base).await.unwrap_or_default() },
        })
    }

    /// Records the request and plays the scripted refusals; `None` to go on.
    fn check(&self, line: String, headers: &HeaderMap, repo: &str) -> Option<Response> {
        self.seen.lock().unwrap().push(line);
        let auth: Vec<String> = headers
            .get_all("authorization")
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        if auth != ["token tea"] {
            // The token, and only the token; Gitea's answer to a token it does not know.
            self.auth_failures.lock().unwrap().push(auth.join(", "));
            return Some(message(401, "user does not exist [uid: 0, name: ]"));
        }
        match *self.everything.lock().unwrap() {
            0 if repo == "acme/web" => None,
            0 => Some(not_found()),
            status => Some(message(status, "scripted")),
        }
    }

    /// Asserts that every request so far carried the token.
    fn assert_authenticated(&self) {
        assert_eq!(
            *self.auth_failures.lock().unwrap(),
            Vec::<String>::new(),
            "requests the fake refused for their Authorization header"
        );
    }

    fn list_requests(&self) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|line| line.starts_with("GET /pulls?"))
            .cloned()
            .collect()
    }
}

fn message(status: u16, text: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        Json(json!({ "message": text, "url": "https://gitea.test/api/swagger" })),
    )
        .into_response()
}

fn not_found() -> Response {
    message(404, "The target couldn't be found.")
}

type RepoPath = UrlPath<(String, String)>;

async fn repository(
    State(g): State<FakeGitea>,
    headers: HeaderMap,
    UrlPath((o, r)): RepoPath,
) -> Response {
    if let Some(refused) = g.check("GET /repo".into(), &headers, &format!("{o}/{r}")) {
        return refused;
    }
    Json(json!({ "full_name": format!("{o}/{r}") })).into_response()
}

async fn branch(
    State(g): State<FakeGitea>,
    headers: HeaderMap,
    UrlPath((o, r, name)): UrlPath<(String, String, String)>,
) -> Response {
    let line = format!("GET /branches/{name}");
    if let Some(refused) = g.check(line, &headers, &format!("{o}/{r}")) {
        return refused;
    }
    match g.head_of(&name).await {
        Some(sha) => Json(json!({ "name": name, "commit": { "id": sha } })).into_response(),
        None => not_found(),
    }
}

async fn list(
    State(g): State<FakeGitea>,
    headers: HeaderMap,
    UrlPath((o, r)): RepoPath,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let state = q.get("state").map_or("open", String::as_str).to_owned();
    let page: usize = q.get("page").map_or(1, |p| p.parse().unwrap());
    let limit: usize = q.get("limit").map_or(30, |l| l.parse().unwrap()).min(50);
    let line = format!("GET /pulls?state={state}&page={page}&limit={limit}");
    if let Some(refused) = g.check(line, &headers, &format!("{o}/{r}")) {
        return refused;
    }
    let mut pulls: Vec<Pull> = g
        .pulls
        .lock()
        .unwrap()
        .iter()
        .filter(|p| match state.as_str() {
            "open" => p.open,
            "closed" => !p.open,
            _ => true,
        })
        .cloned()
        .collect();
    pulls.sort_by_key(|p| std::cmp::Reverse(p.number));
    let mut out = Vec::new();
    for pull in pulls.iter().skip((page - 1) * limit).take(limit) {
        out.push(g.json(pull, true).await);
    }
    Json(Value::Array(out)).into_response()
}

async fn create(
    State(g): State<FakeGitea>,
    headers: HeaderMap,
    UrlPath((o, r)): RepoPath,
    Json(body): Json<Value>,
) -> Response {
    if let Some(refused) = g.check("POST /pulls".into(), &headers, &format!("{o}/{r}")) {
        return refused;
    }
    let head = body["head"].as_str().unwrap().to_owned();
    let base = body["base"].as_str().unwrap().to_owned();
    // Gitea: a head or base that is no branch is a 404.
    if g.head_of(&head).await.is_none() || g.head_of(&base).await.is_none() {
        return not_found();
    }
    let exists = {
        let pulls = g.pulls.lock().unwrap();
        pulls
            .iter()
            .any(|p| p.head == head && p.base == base && p.open)
    };
    if exists {
        return message(409, "pull request already exists for these targets");
    }
    let number = g.add(&head, &base, true);
    let pull = g.pull(number).unwrap();
    (StatusCode::CREATED, Json(g.json(&pull, true).await)).into_response()
}

async fn one(
    State(g): State<FakeGitea>,
    headers: HeaderMap,
    UrlPath((o, r, n)): UrlPath<(String, String, String)>,
) -> Response {
    if let Some(refused) = g.check(format!("GET /pulls/{n}"), &headers, &format!("{o}/{r}")) {
        return refused;
    }
    let Some(pull) = n.parse().ok().and_then(|n| g.pull(n)) else {
        return not_found();
    };
    let checking = {
        let mut checking = g.checking.lock().unwrap();
        let now = *checking > 0;
        *checking = checking.saturating_sub(1);
        now
    };
    let mergeable = !checking && (!pull.open || g.mergeable(&pull).await);
    Json(g.json(&pull, mergeable).await).into_response()
}

/// `GET …/pulls/{base}/{head…}`.
async fn by_base_head(
    State(g): State<FakeGitea>,
    headers: HeaderMap,
    UrlPath((o, r, base, head)): UrlPath<(String, String, String, String)>,
) -> Response {
    let line = format!("GET /pulls/{base}/{head}");
    if let Some(refused) = g.check(line, &headers, &format!("{o}/{r}")) {
        return refused;
    }
    if *g.without_base_head.lock().unwrap() {
        return not_found();
    }
    let oldest = {
        let pulls = g.pulls.lock().unwrap();
        pulls
            .iter()
            .filter(|p| p.base == base && p.head == head)
            .min_by_key(|p| p.number)
            .cloned()
    };
    match oldest {
        Some(pull) => Json(g.json(&pull, true).await).into_response(),
        None => not_found(),
    }
}

/// `POST …/pulls/{index}/merge`, the real merge in the real repository.
async fn merge(
    State(g): State<FakeGitea>,
    headers: HeaderMap,
    UrlPath((o, r, n, rest)): UrlPath<(String, String, String, String)>,
    Json(body): Json<Value>,
) -> Response {
    if let Some(refused) = g.check(
        format!("POST /pulls/{n}/{rest}"),
        &headers,
        &format!("{o}/{r}"),
    ) {
        return refused;
    }
    let Some(pull) = n
        .parse()
        .ok()
        .and_then(|n| g.pull(n))
        .filter(|_| rest == "merge")
    else {
        return not_found();
    };
    g.merges.lock().unwrap().push(body.clone());
    if let Some((status, text)) = g.refuse_merge.lock().unwrap().pop_front() {
        return message(status, text);
    }
    if pull.merged {
        return message(405, "");
    }
    if !pull.open {
        return not_found();
    }
    // Gitea refuses a PR it is still checking or found conflicting with the same 405.
    if *g.checking.lock().unwrap() > 0 || !g.mergeable(&pull).await {
        return message(405, "Please try again later");
    }
    let expected = body["head_commit_id"].as_str().unwrap();
    if g.head_of(&pull.head).await.as_deref() != Some(expected) {
        return message(409, "head out of date");
    }
    assert_eq!(body["Do"], "merge", "the forge's merge style");
    let title = body["MergeTitleField"]
        .as_str()
        .expect("the merge message goes in MergeTitleField");
    let local = LocalForge::new(&g.remote, Identity::default());
    let MergeOutcome::Merged { commit } = local
        .merge(&pull.head, &pull.base, expected, title)
        .await
        .unwrap()
    else {
        panic!("a fresh merge");
    };
    let mut pulls = g.pulls.lock().unwrap();
    let row = pulls.iter_mut().find(|p| p.number == pull.number).unwrap();
    row.open = false;
    row.merged = true;
    row.merge_commit = Some(commit);
    // Gitea answers a merge with an empty body.
    StatusCode::OK.into_response()
}

async fn comment(
    State(g): State<FakeGitea>,
    headers: HeaderMap,
    UrlPath((o, r, n)): UrlPath<(String, String, i64)>,
    Json(body): Json<Value>,
) -> Response {
    let line = format!("POST /issues/{n}/comments");
    if let Some(refused) = g.check(line, &headers, &format!("{o}/{r}")) {
        return refused;
    }
    let text = body["body"].as_str().unwrap().to_owned();
    g.comments.lock().unwrap().push((n, text));
    (StatusCode::CREATED, Json(json!({ "id": 1 }))).into_response()
}

/// Serves the fake; returns its address (`http://127.0.0.1:port`).
async fn serve(g: FakeGitea) -> String {
    let repo = "/api/v1/repos/{o}/{r}";
    let app = Router::new()
        .route(repo, get(repository))
        .route(&format!("{repo}/branches/{{*name}}"), get(branch))
        .route(&format!("{repo}/pulls"), get(list).post(create))
        .route(&format!("{repo}/pulls/{{n}}"), get(one))
        .route(
            &format!("{repo}/pulls/{{n}}/{{*rest}}"),
            get(by_base_head).post(merge),
        )
        .route(&format!("{repo}/issues/{{n}}/comments"), post(comment))
        .with_state(g);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn forge(address: &str, repo: &str) -> GiteaForge {
    GiteaForge::new(address, repo, "tea", MergeStyle::Merge).unwrap()
}

/// A clone of the fake's repository, to push branches from.
async fn clone_of(g: &FakeGitea, dir: &Path) -> Git {
    let clone = dir.join("clone");
    Git::new(dir, Identity::default())
        .run(&[
            "clone",
            "--quiet",
            &g.remote.to_string_lossy(),
            &clone.to_string_lossy(),
        ])
        .await
        .unwrap();
    Git::new(clone, Identity::default())
}

/// Commits `text` to `file` on `branch` (from `main`) and pushes it; returns the commit.
async fn push_change(clone: &Git, branch: &str, file: &str, text: &str) -> String {
    clone.run(&["fetch", "--quiet", "origin"]).await.unwrap();
    clone
        .run(&["checkout", "--quiet", "-B", branch, "origin/main"])
        .await
        .unwrap();
    std::fs::write(clone.dir().join(file), text).unwrap();
    let sha = clone
        .commit_all(&format!("change {file} on {branch}"))
        .await
        .unwrap()
        .unwrap();
    clone
        .run(&[
            "push",
            "--quiet",
            "--force",
            "origin",
            &format!("HEAD:refs/heads/{branch}"),
        ])
        .await
        .unwrap();
    sha
}

#[tokio::test]
async fn a_pull_request_older_than_the_newest_fifty_is_found() {
    // With the endpoint by base and head, and without it (older Gitea): then the list
    // is read page by page.
    for with_endpoint in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let g = FakeGitea::new(dir.path()).await;
        *g.without_base_head.lock().unwrap() = !with_endpoint;
        let clone = clone_of(&g, dir.path()).await;
        let head = push_change(&clone, BRANCH, "b.txt", "two\n").await;
        assert_eq!(g.add(BRANCH, "main", true), 1);
        for i in 0..60 {
            g.add(&format!("damascus/other-{i}"), "main", true);
        }
        let forge = forge(&serve(g.clone()).await, "acme/web");

        let pr = forge
            .open_or_find(BRANCH, "main", "Title", "Body")
            .await
            .unwrap();
        assert_eq!(
            pr.url, "https://gitea.test/acme/web/pulls/1",
            "{with_endpoint}"
        );
        assert_eq!(pr.head, head);
        assert_eq!(
            forge.state(BRANCH, "main").await.unwrap(),
            PrState::Open { head: head.clone() }
        );
        forge.comment(BRANCH, "tests passed").await.unwrap();
        assert_eq!(
            *g.comments.lock().unwrap(),
            [(1, "tests passed".to_owned())]
        );
        let lists = g.list_requests();
        if with_endpoint {
            assert_eq!(lists, Vec::<String>::new(), "one call finds an open PR");
        } else {
            assert!(
                lists.contains(&"GET /pulls?state=open&page=2&limit=50".to_owned()),
                "{lists:?}"
            );
        }
        assert!(
            !g.seen.lock().unwrap().contains(&"POST /pulls".to_owned()),
            "the old PR is reused, no second one is opened"
        );

        assert!(matches!(
            forge
                .merge(BRANCH, "main", &head, "Merge it")
                .await
                .unwrap(),
            MergeOutcome::Merged { .. }
        ));
        // Merged, so no open PR: the whole list is read to find the newest.
        assert_eq!(
            forge.state(BRANCH, "main").await.unwrap(),
            PrState::Merged { head: head.clone() }
        );
        assert!(g
            .list_requests()
            .contains(&"GET /pulls?state=all&page=2&limit=50".to_owned()));
        forge.comment(BRANCH, "merged").await.unwrap();
        assert_eq!(g.comments.lock().unwrap()[1], (1, "merged".to_owned()));
        g.assert_authenticated();
    }
}

#[tokio::test]
async fn a_closed_pull_request_does_not_hide_the_open_one() {
    let dir = tempfile::tempdir().unwrap();
    let g = FakeGitea::new(dir.path()).await;
    let clone = clone_of(&g, dir.path()).await;
    push_change(&clone, BRANCH, "b.txt", "two\n").await;
    // #1 was closed by a person; #61 is the open one. Gitea's endpoint answers #1.
    g.add(BRANCH, "main", false);
    for i in 0..59 {
        g.add(&format!("damascus/other-{i}"), "main", true);
    }
    assert_eq!(g.add(BRANCH, "main", true), 61);
    let forge = forge(&serve(g.clone()).await, "acme/web");
    let pr = forge.open_or_find(BRANCH, "main", "t", "b").await.unwrap();
    assert_eq!(pr.url, "https://gitea.test/acme/web/pulls/61");
    assert!(matches!(
        forge.state(BRANCH, "main").await.unwrap(),
        PrState::Open { .. }
    ));
    forge.comment(BRANCH, "hello").await.unwrap();
    assert_eq!(*g.comments.lock().unwrap(), [(61, "hello".to_owned())]);
    g.assert_authenticated();
}

#[tokio::test]
async fn a_merge_reports_the_real_merge_commit() {
    let dir = tempfile::tempdir().unwrap();
    let g = FakeGitea::new(dir.path()).await;
    let clone = clone_of(&g, dir.path()).await;
    let head = push_change(&clone, BRANCH, "b.txt", "two\n").await;
    let forge = forge(&serve(g.clone()).await, "acme/web");
    let pr = forge
        .open_or_find(BRANCH, "main", "Title", "Body")
        .await
        .unwrap();
    assert_eq!(pr.url, "https://gitea.test/acme/web/pulls/1");
    // A retried build finds it before trying to create another.
    assert_eq!(
        forge
            .open_or_find(BRANCH, "main", "Title", "Body")
            .await
            .unwrap(),
        pr
    );
    let posts = g
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|l| *l == "POST /pulls")
        .count();
    assert_eq!(posts, 1, "one PR opened");

    let outcome = forge
        .merge(BRANCH, "main", &head, "Merge damascus/web-1: Title")
        .await
        .unwrap();
    let main = g.head_of("main").await.unwrap();
    assert_eq!(
        outcome,
        MergeOutcome::Merged {
            commit: main.clone()
        }
    );
    assert_ne!(main, head, "the merge commit, not the branch head");
    let parents = g
        .git()
        .run(&["rev-list", "--parents", "-n1", &main])
        .await
        .unwrap();
    assert_eq!(parents.split(' ').count(), 3, "a merge commit: {parents}");
    assert_eq!(
        g.git()
            .run(&["log", "-1", "--format=%s", &main])
            .await
            .unwrap(),
        "Merge damascus/web-1: Title",
        "the message is sent as MergeTitleField"
    );
    let merges = g.merges.lock().unwrap().clone();
    assert_eq!(merges[0]["head_commit_id"], head.as_str());

    // A second merge of a merged PR is a no-op.
    assert_eq!(
        forge.merge(BRANCH, "main", &head, "again").await.unwrap(),
        MergeOutcome::AlreadyMerged
    );
    assert_eq!(g.head_of("main").await.unwrap(), main);
    g.assert_authenticated();
}

#[tokio::test]
async fn a_conflict_fails_and_a_pull_request_being_checked_waits() {
    let dir = tempfile::tempdir().unwrap();
    let g = FakeGitea::new(dir.path()).await;
    let clone = clone_of(&g, dir.path()).await;
    let address = serve(g.clone()).await;
    let forge = forge(&address, "acme/web");

    // The branch and main change the same line: git cannot merge them.
    let conflicting = push_change(&clone, BRANCH, "a.txt", "feature\n").await;
    forge.open_or_find(BRANCH, "main", "t", "b").await.unwrap();
    push_change(&clone, "main", "a.txt", "main moved\n").await;
    match forge.merge(BRANCH, "main", &conflicting, "m").await {
        Err(ForgeError::Conflict { base, detail }) => {
            assert_eq!(base, "main");
            assert!(
                detail.contains("#1") && detail.contains("mergeable: false"),
                "{detail}"
            );
        }
        other => panic!("a conflict is a Conflict: {other:?}"),
    }

    // Gitea still checking the PR: refused with 405 and `mergeable: false` on the first
    // read, mergeable on the next. Transient: merge again later.
    let branch = "damascus/web-2";
    let clean = push_change(&clone, branch, "c.txt", "three\n").await;
    forge.open_or_find(branch, "main", "t", "b").await.unwrap();
    *g.checking.lock().unwrap() = 1;
    match forge.merge(branch, "main", &clean, "m").await {
        Err(ForgeError::Transient(reason)) => {
            assert!(reason.contains("Please try again later"), "{reason}")
        }
        other => panic!("a PR being checked is transient: {other:?}"),
    }
    assert!(matches!(
        forge.merge(branch, "main", &clean, "m").await,
        Ok(MergeOutcome::Merged { .. })
    ));

    // The branch moved after it was tested: review again, never merge untested.
    let branch = "damascus/web-3";
    let tested = push_change(&clone, branch, "d.txt", "four\n").await;
    forge.open_or_find(branch, "main", "t", "b").await.unwrap();
    let moved = push_change(&clone, branch, "d.txt", "four, changed\n").await;
    match forge.merge(branch, "main", &tested, "m").await {
        Err(ForgeError::HeadMoved { expected, actual }) => {
            assert_eq!((expected, actual), (tested, moved))
        }
        other => panic!("{other:?}"),
    }
    g.assert_authenticated();
}

#[tokio::test]
async fn a_missing_branch_or_repository_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let g = FakeGitea::new(dir.path()).await;
    let address = serve(g.clone()).await;

    let err = forge(&address, "acme/web")
        .open_or_find("damascus/never-pushed", "main", "t", "b")
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("damascus/never-pushed is missing") && text.contains("was it pushed?"),
        "{text}"
    );
    assert!(!text.contains("no repository"), "{text}");

    let clone = clone_of(&g, dir.path()).await;
    push_change(&clone, BRANCH, "b.txt", "two\n").await;
    let err = forge(&address, "acme/nope")
        .open_or_find(BRANCH, "main", "t", "b")
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("no repository acme/nope") && text.contains("--forge-repo"),
        "{text}"
    );
    g.assert_authenticated();
}

#[tokio::test]
async fn refusals_map_to_verdicts() {
    for (status, check) in [
        (401u16, "refused the token"),
        (403, "refused the token"),
        (502, "answered 502"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let g = FakeGitea::new(dir.path()).await;
        *g.everything.lock().unwrap() = status;
        let forge = forge(&serve(g.clone()).await, "acme/web");
        let err = forge
            .open_or_find(BRANCH, "main", "t", "b")
            .await
            .unwrap_err();
        assert!(err.to_string().contains(check), "{status}: {err}");
        assert_eq!(
            matches!(err, ForgeError::Transient(_)),
            status >= 500,
            "{status}: {err:?}"
        );
        g.assert_authenticated();
    }
}

#[tokio::test]
async fn credentials_in_the_forge_url_never_reach_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let g = FakeGitea::new(dir.path()).await;
    *g.everything.lock().unwrap() = 401;
    let address = serve(g.clone()).await;
    let with_secret = address.replace("http://", "http://user:secret@");
    let forge = forge(&with_secret, "acme/web");
    assert!(!format!("{forge:?}").contains("secret"));
    let err = forge.state(BRANCH, "main").await.unwrap_err();
    let host = address.trim_start_matches("http://");
    assert!(
        err.to_string().contains(host) && !err.to_string().contains("secret"),
        "{err}"
    );
    // No server at all: the network error names the host, not the URL.
    let closed = GiteaForge::new(
        "http://user:secret@127.0.0.1:9",
        "acme/web",
        "tea",
        MergeStyle::Merge,
    )
    .unwrap();
    let err = closed.state(BRANCH, "main").await.unwrap_err();
    assert!(matches!(err, ForgeError::Transient(_)), "{err:?}");
    assert!(
        err.to_string().contains("127.0.0.1:9") && !err.to_string().contains("secret"),
        "{err}"
    );
    g.assert_authenticated();
}

/// Gitea's refusals that a retry cannot change ask a person; a base that moved while
/// Gitea merged is retried; only a real conflict sends the work back to build.
#[tokio::test]
async fn gitea_merge_refusals_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let g = FakeGitea::new(dir.path()).await;
    let clone = clone_of(&g, dir.path()).await;
    let head = push_change(&clone, BRANCH, "b.txt", "two\n").await;
    let forge = forge(&serve(g.clone()).await, "acme/web");
    forge
        .open_or_find(BRANCH, "main", "Title", "Body")
        .await
        .unwrap();
    g.refuse_merge.lock().unwrap().extend([
        (405, "Invalid merge style: squash is not allowed"),
        (405, "User not allowed to merge PR"),
        (409, "merge push out of date"),
        (409, "PushRejected: pre-receive hook declined"),
        (409, "Merge Conflicts"),
    ]);
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        outcomes.push(forge.merge(BRANCH, "main", &head, "m").await.unwrap_err());
    }
    assert!(
        matches!(&outcomes[0], ForgeError::Other(t) if t.contains("--merge-method")),
        "{:?}",
        outcomes[0]
    );
    assert!(
        matches!(&outcomes[1], ForgeError::Other(_)),
        "{:?}",
        outcomes[1]
    );
    assert!(
        matches!(&outcomes[2], ForgeError::Transient(t) if t.contains("moved meanwhile")),
        "{:?}",
        outcomes[2]
    );
    assert!(
        matches!(&outcomes[3], ForgeError::Other(t) if t.contains("hooks")),
        "{:?}",
        outcomes[3]
    );
    assert!(
        matches!(&outcomes[4], ForgeError::Conflict { .. }),
        "{:?}",
        outcomes[4]
    );
    // And then it merges.
    assert!(matches!(
        forge.merge(BRANCH, "main", &head, "m").await,
        Ok(MergeOutcome::Merged { .. })
    ));
    g.assert_authenticated();
}

/// A token Gitea does not know is refused at once, with what to check; retrying cannot
/// change it, so it is not transient.
#[tokio::test]
async fn a_wrong_token_is_a_clear_refusal_not_a_transient_error() {
    let dir = tempfile::tempdir().unwrap();
    let g = FakeGitea::new(dir.path()).await;
    let address = serve(g.clone()).await;
    let forge = GiteaForge::new(&address, "acme/web", "revoked", MergeStyle::Merge).unwrap();
    let err = forge
        .open_or_find(BRANCH, "main", "t", "b")
        .await
        .unwrap_err();
    assert!(!matches!(err, ForgeError::Transient(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("refused the token") && text.contains("Gitea token"),
        "{text}"
    );
    assert_eq!(
        *g.auth_failures.lock().unwrap(),
        ["token revoked"],
        "one request, refused for its token"
    );
}
