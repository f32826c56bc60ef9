//! Live-call registry entries: what the admin side may see of and do to a call in progress.
//!
//! Every answered (or ringing) call registers a [`CallHandle`] in `AppState::calls`, keyed by
//! its Twilio-style call SID (`CA` + 32 hex digits, the id the agent sees in its `start` event).
//! The admin API looks calls up there to hang them up or transfer them (the Twilio-compatible
//! call update) and to report them; the call task owns the other end of the command channel.
//! A transfer's answer (started, or why not) comes back from the call flow on a oneshot, so the
//! REST caller learns at once whether it got 200, 400, 404 or 409.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use switchboard_routing::model::Scope;

use tokio::sync::{mpsc, oneshot};

/// How many commands may wait for a call task. A call acts on the first hang-up; a few slots
/// absorb a double click without ever blocking the admin handler.
pub const CALL_COMMAND_QUEUE: usize = 4;

/// Why a call is being ended from outside its own task (goes into the BYE's Reason header).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HangupCause {
    /// `POST …/Calls/{CallSid}.json` with `Status=completed`.
    RestApi,
    /// The same call update with `Twiml=<Response><Hangup/></Response>`.
    Twiml,
    /// An operator action or shutdown.
    Admin(String),
}

/// Commands the admin side sends to a live call.
#[derive(Debug)]
#[non_exhaustive]
pub enum CallCommand {
    /// End the call: BYE if answered, 487/480 to the INVITE if still ringing.
    Hangup(HangupCause),
    /// Hand the caller to another party (REFER to the carrier); the call flow answers on
    /// the request's `reply`.
    Transfer(TransferRequest),
}

/// Where a transfer goes, validated (see `admin::twiml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferTarget {
    /// An E.164 number (`+` and 2 to 15 digits). The call flow turns it into a `sip:` URI on
    /// the carrier's side of the call.
    Number(String),
    /// A `sip:` or `sips:` URI, as written (checked by crates/sip's URI parser).
    Uri(String),
}

impl std::fmt::Display for TransferTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransferTarget::Number(n) => f.write_str(n),
            TransferTarget::Uri(u) => f.write_str(u),
        }
    }
}

/// A transfer asked of a call, with where its answer goes.
#[derive(Debug)]
pub struct TransferRequest {
    pub target: TransferTarget,
    /// `Ok(())`: the REFER is out and progress goes to the agent's stream.
    pub reply: oneshot::Sender<Result<(), TransferRefused>>,
}

/// Why a transfer was not started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferRefused {
    /// The call's connection has `transfer = "disabled"`.
    #[error("transfers are disabled on this call's connection")]
    Disabled,
    /// A transfer of this call is still waiting for its outcome.
    #[error("a transfer of this call is already in progress")]
    InProgress,
    /// The call is not answered and confirmed yet (or is being hung up).
    #[error("the call is not in progress yet")]
    NotInProgress,
    /// The call is over.
    #[error("call has already ended")]
    Ended,
    /// The REFER could not be sent (transaction limit, dialog gone).
    #[error("the REFER could not be sent: {0}")]
    NotSent(String),
}

/// The call is already over (its task has ended or is ending); nothing was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("call has already ended")]
pub struct CallEnded;

/// What is known about a call when it is registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallDetails {
    /// `CA…`: the id in the agent's `start` event and in the REST API path.
    pub call_sid: String,
    /// `AC…`: the account the call belongs to (derived from its org/workspace, see
    /// [`account_sid_for`]); REST paths must name it.
    pub account_sid: String,
    /// The SIP Call-ID of the inbound dialog (for logs and operators).
    pub sip_call_id: String,
    /// Called number, E.164.
    pub to: String,
    /// Caller number as presented (E.164 when it could be normalised; empty if withheld).
    pub from: String,
    pub deployment_id: String,
    /// The agent app and version the call was routed to (after any split).
    pub app_id: String,
    pub app_version: u32,
    /// The deployment's scope, for access checks by scoped admin keys.
    pub scope: Scope,
}

/// A live call as the rest of the gateway sees it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CallHandle {
    pub details: Arc<CallDetails>,
    /// Wall-clock start, for listings.
    pub started_at: SystemTime,
    /// Set once, when the call is answered (the `call.answered` event).
    answered_at: Arc<OnceLock<SystemTime>>,
    commands: mpsc::Sender<CallCommand>,
}

impl CallHandle {
    /// Creates a handle and the receiver the call task listens on.
    pub fn new(details: CallDetails) -> (Self, mpsc::Receiver<CallCommand>) {
        let (commands, rx) = mpsc::channel(CALL_COMMAND_QUEUE);
        let handle = Self {
            details: Arc::new(details),
            started_at: SystemTime::now(),
            answered_at: Arc::new(OnceLock::new()),
            commands,
        };
        (handle, rx)
    }

    pub fn call_sid(&self) -> &str {
        &self.details.call_sid
    }

    /// Asks the call to end. Never blocks: if the call's queue is full a hang-up is already
    /// pending, which is just as good.
    pub fn hangup(&self, cause: HangupCause) -> Result<(), CallEnded> {
        match self.commands.try_send(CallCommand::Hangup(cause)) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(CallEnded),
        }
    }

    /// Asks the call to transfer its caller to `target` and waits for the call flow's answer.
    /// Ends early with [`TransferRefused::Ended`] when the call's task is gone (or drops the
    /// request because it is ending); the caller bounds the wait.
    pub async fn transfer(&self, target: TransferTarget) -> Result<(), TransferRefused> {
        let (reply, answer) = oneshot::channel();
        match self
            .commands
            .try_send(CallCommand::Transfer(TransferRequest { target, reply }))
        {
            Ok(()) => {}
            // Only hang-ups fill the queue: the call is ending.
            Err(mpsc::error::TrySendError::Full(_)) => return Err(TransferRefused::NotInProgress),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(TransferRefused::Ended),
        }
        answer.await.unwrap_or(Err(TransferRefused::Ended))
    }

    /// Records the answer time (the first call wins).
    pub fn mark_answered(&self, at: SystemTime) {
        let _ = self.answered_at.set(at);
    }

    /// When the call was answered; `None` while it rings.
    pub fn answered_at(&self) -> Option<SystemTime> {
        self.answered_at.get().copied()
    }

    /// True while the call task still listens for commands.
    pub fn is_live(&self) -> bool {
        !self.commands.is_closed()
    }
}

/// The Twilio-style account SID of a scope: `AC` + the MD5 of `org_id/workspace_id` in hex.
/// Stable across restarts and gateway instances, so agents can build REST URLs from the
/// `accountSid` of their `start` event and any gateway recognises them.
pub fn account_sid_for(scope: &Scope) -> String {
    use md5::{Digest as _, Md5};
    let digest = Md5::new()
        .chain_update(scope.org_id.as_bytes())
        .chain_update(b"/")
        .chain_update(scope.workspace_id.as_bytes())
        .finalize();
    let mut sid = String::with_capacity(34);
    sid.push_str("AC");
    for byte in digest {
        let _ = write!(sid, "{byte:02x}");
    }
    sid
}

/// A fresh Twilio-style SID: `prefix` (e.g. `CA`, `MZ`) + 32 lowercase hex digits (128 random
/// bits, so SIDs never collide in practice and can't be guessed from each other).
pub fn new_sid(prefix: &str) -> String {
    let bits: u128 = rand::random();
    let mut sid = String::with_capacity(prefix.len() + 32);
    sid.push_str(prefix);
    let _ = write!(sid, "{bits:032x}");
    sid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn details() -> CallDetails {
        let scope = Scope::new("org", "ws");
        CallDetails {
            call_sid: new_sid("CA"),
            account_sid: account_sid_for(&scope),
            sip_call_id: "abc@host".into(),
            to: "+918047168000".into(),
            from: "+919999999999".into(),
            deployment_id: "dep-1".into(),
            app_id: "app-1".into(),
            app_version: 1,
            scope,
        }
    }

    #[test]
    fn account_sids_are_stable_per_scope() {
        let a = account_sid_for(&Scope::new("org", "ws"));
        assert_eq!(a.len(), 34);
        assert!(a.starts_with("AC"));
        assert_eq!(a, account_sid_for(&Scope::new("org", "ws")));
        assert_ne!(a, account_sid_for(&Scope::new("org", "ws2")));
        // The separator keeps ("a/b","c") and ("a","b/c") apart only if ids hold no '/',
        // which the admin API guarantees; plain concatenation collisions are avoided.
        assert_ne!(
            account_sid_for(&Scope::new("ab", "c")),
            account_sid_for(&Scope::new("a", "bc"))
        );
    }

    #[test]
    fn sid_has_prefix_and_32_hex_digits() {
        let sid = new_sid("CA");
        assert_eq!(sid.len(), 34);
        assert!(sid.starts_with("CA"));
        assert!(sid[2..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(sid, new_sid("CA"));
    }

    #[tokio::test]
    async fn hangup_reaches_the_call_and_fails_once_it_ended() {
        let (handle, mut rx) = CallHandle::new(details());
        assert!(handle.is_live());
        handle.hangup(HangupCause::RestApi).unwrap();
        assert!(matches!(
            rx.recv().await,
            Some(CallCommand::Hangup(HangupCause::RestApi))
        ));
        drop(rx);
        assert!(!handle.is_live());
        assert_eq!(handle.hangup(HangupCause::RestApi), Err(CallEnded));
    }

    #[tokio::test]
    async fn a_transfer_gets_the_call_flows_answer_or_ended_when_nobody_answers() {
        let (handle, mut rx) = CallHandle::new(details());
        let target = TransferTarget::Number("+918000000000".into());
        let asking = tokio::spawn({
            let handle = handle.clone();
            let target = target.clone();
            async move { handle.transfer(target).await }
        });
        match rx.recv().await {
            Some(CallCommand::Transfer(request)) => {
                assert_eq!(request.target, target);
                request
                    .reply
                    .send(Err(TransferRefused::InProgress))
                    .unwrap();
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(asking.await.unwrap(), Err(TransferRefused::InProgress));
        // A task that drops the request (it is ending) reads as an ended call.
        let asking = tokio::spawn({
            let handle = handle.clone();
            async move { handle.transfer(target).await }
        });
        drop(rx.recv().await);
        assert_eq!(asking.await.unwrap(), Err(TransferRefused::Ended));
        drop(rx);
        assert_eq!(
            handle.transfer(TransferTarget::Uri("sip:a@b".into())).await,
            Err(TransferRefused::Ended)
        );
    }

    #[test]
    fn full_queue_still_counts_as_delivered() {
        let (handle, _rx) = CallHandle::new(details());
        for _ in 0..CALL_COMMAND_QUEUE + 3 {
            handle.hangup(HangupCause::RestApi).unwrap();
        }
    }
}
