//! The parent's side of the control socket (DESIGN §7): what it runs for
//! a root client the engine passed on. Who asks is the kernel's word, from
//! the client's own connection; what is asked is read from that connection
//! by the parent itself (`imsg::creds`), never taken from the engine.

use super::Parent;
use super::run::Tx;
use crate::imsg::creds::{ClientLine, Readers, Unread};
use crate::imsg::{CtlReply, CtlRequest, ParentRequest, ToEngine};
use crate::log::{self, Prio};
use crate::proto::ctl::{ErrorCode, Reply};

/// The engine says a root client asked for `req.command`: who asks is the
/// kernel's word, from the client's own connection (the engine's `uid` is
/// only checked against it), and what is asked is read from there too.
pub(super) fn ctl_request(
    p: &mut Parent,
    tx: &Tx,
    readers: &mut Readers,
    req: CtlRequest,
) -> Result<(), String> {
    let control = &p.conf.daemon.socket;
    let client = p.ctl_creds.as_mut().and_then(|(chan, c)| {
        c.drain(std::os::fd::AsFd::as_fd(chan), control);
        c.take(req.id)
    });
    let command = req.command.name();
    let Some(client) = client else {
        log::event(Prio::Warning, "ctl_denied")
            .kv("uid", "unknown")
            .kv("command", command)
            .msg("no client credentials from the kernel")
            .send();
        let reply = Reply::error(ErrorCode::Denied, "permission denied: no credentials");
        let _ = tx.send(ToEngine::CtlReply(CtlReply { id: req.id, reply }).encode());
        return Ok(());
    };
    if client.uid != req.uid {
        return Err(format!(
            "engine said uid {} for a client the kernel says is uid {}",
            req.uid, client.uid
        ));
    }
    // The engine allows only read-only commands to non-root.
    if client.uid != 0 {
        return Err(format!("mutating request for uid {}", client.uid));
    }
    let (id, uid) = (req.id, client.uid);
    if !readers.start(id, req.command, client) {
        let why = "too many control requests being read";
        refuse(tx, id, uid, command, ErrorCode::Refused, why);
    }
    Ok(())
}

/// A request line read from a root client's connection: run when it is
/// the parent's and what the engine said, refused otherwise (nothing runs).
pub(super) fn client_request(p: &mut Parent, tx: &Tx, line: ClientLine) {
    let ClientLine {
        id,
        uid,
        command,
        request,
    } = line;
    let said = command.name();
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            let code = match e {
                Unread::TooLong | Unread::Bad(_) => ErrorCode::BadRequest,
                Unread::Ended | Unread::TimedOut | Unread::Failed(_) => ErrorCode::Denied,
            };
            return refuse(tx, id, uid, said, code, &e.to_string());
        }
    };
    let asked = request.name();
    let Some(request) = ParentRequest::from_request(request) else {
        let why = format!("the client asked for {asked}, not a command the parent runs");
        return refuse(tx, id, uid, said, ErrorCode::Denied, &why);
    };
    if request.command() != command {
        let why = format!("the client asked for {asked}, the engine said {said}");
        return refuse(tx, id, uid, said, ErrorCode::Denied, &why);
    }
    let reply = match request {
        ParentRequest::Lockdown { target } => super::operator::lock(p, &target),
        ParentRequest::Unlock { target, force } => super::operator::unlock(p, &target, force),
        ParentRequest::Reload => super::run::reload(p, tx),
        ParentRequest::PolicyLoad { bundle_b64 } => {
            match super::policy_jobs::policy_load(p, &bundle_b64, id) {
                Some(r) => r,
                // Answered when the verification thread is done.
                None => return,
            }
        }
        ParentRequest::Log { verbose } => {
            log::set_verbose(verbose);
            Reply::ok(if verbose {
                "logging verbose"
            } else {
                "logging brief"
            })
        }
    };
    super::run::send_all_states(p, tx);
    let _ = tx.send(ToEngine::CtlReply(CtlReply { id, reply }).encode());
}

/// A control request the parent runs nothing for: logged, and answered
/// with the reason.
fn refuse(tx: &Tx, id: u64, uid: u32, command: &str, code: ErrorCode, why: &str) {
    log::event(Prio::Warning, "ctl_denied")
        .kv("uid", uid)
        .kv("command", command)
        .msg(why)
        .send();
    let reply = Reply::error(code, format!("refused: {why}"));
    let _ = tx.send(ToEngine::CtlReply(CtlReply { id, reply }).encode());
}
