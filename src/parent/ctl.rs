//! The parent's side of the control socket (DESIGN §7): what it runs for
//! a root client the engine passed on. Who asks is the kernel's word, from
//! the client's own connection; what is asked is read from that connection
//! by the parent itself (`imsg::creds`), never taken from the engine.

use super::Parent;
use super::changed::Changed;
use crate::imsg::creds::{ClientLine, Readers, Unread};
use crate::imsg::{CtlRequest, ParentRequest};
use crate::log::{self, Event};
use crate::proto::ctl::{ErrorCode, Reply};

/// The engine says a root client asked for `req.command`: who asks is the
/// kernel's word, from the client's own connection (the engine's `uid` is
/// only checked against it), and what is asked is read from there too.
pub(super) fn ctl_request(
    p: &mut Parent,
    readers: &mut Readers,
    req: CtlRequest,
) -> Result<Changed, String> {
    let control = &p.conf.daemon.socket;
    let client = p.ctl_creds.as_mut().and_then(|(chan, c)| {
        c.drain(std::os::fd::AsFd::as_fd(chan), control);
        c.take(req.id)
    });
    let command = req.command.name();
    let Some(client) = client else {
        let noted = || Some(command.to_string());
        let now = std::time::Instant::now();
        if let Some(held) = p.ctl_unknown.admit_noting((), now, noted) {
            unknown_denied(command, held);
        }
        let reply = Reply::error(ErrorCode::Denied, "permission denied: no credentials");
        let mut out = Changed::none();
        out.reply(req.id, reply);
        return Ok(out);
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
        return Ok(refuse(id, uid, command, ErrorCode::Refused, why));
    }
    Ok(Changed::none())
}

/// `ctl_denied uid=unknown`, with the count held back before it.
fn unknown_denied(command: &str, held: u64) {
    log::event(Event::CtlDenied)
        .kv("uid", "unknown")
        .kv("command", command)
        .suppressed(held)
        .msg("no client credentials from the kernel")
        .send();
}

/// The `ctl_denied uid=unknown` count no later request carried, once its
/// minute is over (from the loop's tick).
pub(super) fn unknown_overdue(p: &mut Parent) {
    for ((), n, command) in p.ctl_unknown.overdue(std::time::Instant::now()) {
        unknown_denied(&command.unwrap_or_default(), n);
    }
}

/// A request line read from a root client's connection: run when it is
/// the parent's and what the engine said, refused otherwise (nothing runs).
pub(super) fn client_request(p: &mut Parent, line: ClientLine) -> Changed {
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
                Unread::Ended | Unread::TimedOut | Unread::HungUp | Unread::Failed(_) => {
                    ErrorCode::Denied
                }
            };
            return refuse(id, uid, said, code, &e.to_string());
        }
    };
    let asked = request.name();
    let Some(request) = ParentRequest::from_request(request) else {
        let why = format!("the client asked for {asked}, not a command the parent runs");
        return refuse(id, uid, said, ErrorCode::Denied, &why);
    };
    if request.command() != command {
        let why = format!("the client asked for {asked}, the engine said {said}");
        return refuse(id, uid, said, ErrorCode::Denied, &why);
    }
    let (reply, mut out) = match request {
        ParentRequest::Lockdown { target } => (super::operator::lock(p, &target), Changed::none()),
        ParentRequest::Unlock { target, force } => {
            (super::operator::unlock(p, &target, force), Changed::none())
        }
        // The new config, policy and states first, then the answer.
        ParentRequest::Reload => super::reload::reload(p),
        ParentRequest::PolicyLoad { bundle_b64 } => {
            match super::policy_jobs::policy_load(p, &bundle_b64, id) {
                Some(r) => (r, Changed::none()),
                // Answered when the verification thread is done.
                None => return Changed::none(),
            }
        }
        ParentRequest::Log { verbose } => {
            log::set_verbose(verbose);
            let reply = Reply::ok(if verbose {
                "logging verbose"
            } else {
                "logging brief"
            });
            (reply, Changed::none())
        }
    };
    out.all_states();
    out.reply(id, reply);
    out
}

/// A control request the parent runs nothing for: logged, and answered
/// with the reason.
fn refuse(id: u64, uid: u32, command: &str, code: ErrorCode, why: &str) -> Changed {
    log::event(Event::CtlDenied)
        .kv("uid", uid)
        .kv("command", command)
        .msg(why)
        .send();
    let reply = Reply::error(code, format!("refused: {why}"));
    let mut out = Changed::none();
    out.reply(id, reply);
    out
}
