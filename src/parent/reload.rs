//! `qkdctl reload` and SIGHUP (DESIGN §2): a fresh config is swapped in
//! only if it parses, changes nothing that needs a restart, and what the
//! parent derives from it (policy keys, what the engine gets) can be read;
//! then the engine hears the new config, the policy and every link's state.

use super::changed::Changed;
use super::{Parent, engine_conf};
use crate::conf::Config;
use crate::imsg::ToEngine;
use crate::log::{self, Event};
use crate::proto::ctl::{ErrorCode, Reply};

/// SIGHUP / `qkdctl reload`: a fresh config is swapped in only if it is
/// valid and changes nothing a reload cannot apply.
///
/// Returns the answer, and the new config, policy and states for the
/// engine (then the `reload` event) when it was swapped in.
pub(super) fn reload(p: &mut Parent) -> (Reply, Changed) {
    match swap_config(p) {
        Ok(out) => (Reply::ok("reloaded"), out),
        Err(r) => (r, Changed::none()),
    }
}

fn swap_config(p: &mut Parent) -> Result<Changed, Reply> {
    let path = p.conf.path.clone();
    let new = match crate::conf::load(&path) {
        Ok(c) => c,
        Err(e) => {
            log::event(Event::ReloadFailed)
                .kv("config", path.display())
                .msg(e.to_string().trim_end().replace('\n', "; "))
                .send();
            return Err(Reply::error(
                ErrorCode::ConfigError,
                format!(
                    "config file {} has errors, not reloading:\n{e}",
                    path.display()
                ),
            ));
        }
    };
    let needs_restart = restart_only(&p.conf, &new);
    if !needs_restart.is_empty() {
        let msg = format!(
            "{} changed: that needs a restart; not reloading",
            needs_restart.join(", ")
        );
        log::event(Event::ReloadFailed).msg(&msg).send();
        return Err(Reply::error(ErrorCode::Refused, msg));
    }
    if let Err(e) = super::check_supported(&new) {
        return Err(failed(e));
    }
    // What start-up derives from its config: the policy keys, then what
    // the engine gets (its KME clients and QBER sources built as it will).
    let derived = super::read_keys(&new).and_then(|keys| {
        let inputs = engine_conf::engine_inputs(&new, &keys, &mut **p.wg.backend())?;
        Ok((keys, inputs))
    });
    let (keys, inputs) = derived.map_err(failed)?;
    trusts_what_is_in_force(p, &keys).map_err(failed)?;
    let old = (
        std::mem::replace(&mut p.keys, keys),
        std::mem::replace(
            &mut p.store,
            crate::policy::Store::new(new.policy.dir.clone()),
        ),
        std::mem::replace(&mut p.conf, new),
    );
    let mut out = Changed::none();
    let cfg = engine_conf::engine_config(p, inputs);
    if let Some(port) = new_port(&p.engine_ports, &cfg) {
        (p.keys, p.store, p.conf) = old;
        return Err(failed(format!(
            "a KME or QBER source on TCP port {port}, which the engine's sandbox did not \
             allow at start (it allows {:?}): that needs a restart",
            p.engine_ports
        )));
    }
    match ToEngine::Config(Box::new(cfg)).try_encode() {
        Ok(f) => {
            crate::utc::set_offset(p.conf.testing.wall_clock_offset);
            out.frame(f);
        }
        Err(e) => {
            (p.keys, p.store, p.conf) = old;
            return Err(failed(e));
        }
    }
    out.policy();
    out.all_states();
    // Logged once the engine has heard the new config (its line follows).
    out.event(log::event(Event::Reload).kv("config", path.display()));
    Ok(out)
}

/// A TCP port the new engine config connects to that the engine's sandbox
/// (fixed at its start) does not allow: on Linux landlock would refuse the
/// connection, and the link would lock `source-lost` or `key-stale` behind
/// a reload that said "reloaded". pledge(2) does not restrict ports.
fn new_port(allowed: &[u16], cfg: &crate::imsg::EngineConfig) -> Option<u16> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    (crate::sandbox::connect_ports(cfg).into_iter()).find(|p| !allowed.contains(p))
}

/// The sections whose change a reload cannot apply: the links and their
/// firewall and WireGuard (the kernel's objects), the parent's own paths
/// (fixed in its sandbox at start: a new policy directory or spool could
/// not be opened) and the peering sockets.
fn restart_only(old: &Config, new: &Config) -> Vec<&'static str> {
    let listen = |c: &Config| c.peering.as_ref().map(|p| p.listen);
    let paths = |c: &Config| (c.policy.dir.clone(), c.policy.incoming.clone());
    [
        ("[daemon]", old.daemon != new.daemon),
        ("[firewall]", old.firewall != new.firewall),
        ("[wireguard]", old.wireguard != new.wireguard),
        ("[link]", old.link != new.link),
        ("[peering] listen", listen(old) != listen(new)),
        ("[policy] dir or incoming", paths(old) != paths(new)),
    ]
    .into_iter()
    .filter_map(|(what, changed)| changed.then_some(what))
    .collect()
}

/// New policy keys must still trust the bundle in force (a restart checks
/// it against them: one signed by a removed key would be refused there and
/// every link held), and cannot change under a bundle being verified with
/// the old ones.
fn trusts_what_is_in_force(
    p: &Parent,
    keys: &[crate::policy::signify::PublicKey],
) -> Result<(), String> {
    let same = |a: &[crate::policy::signify::PublicKey]| {
        a.len() == keys.len() && a.iter().zip(keys).all(|(x, y)| x.key == y.key)
    };
    if same(&p.keys) {
        return Ok(());
    }
    if p.job.is_some() {
        return Err(
            "[policy] pubkeys changed while a bundle is being verified with the present keys; \
             reload again once it is done"
                .into(),
        );
    }
    match &p.bundle {
        Some(b) if crate::policy::verify::signed_by(&b.files, keys).is_err() => Err(format!(
            "[policy] pubkeys: the bundle in force (serial {}) is signed by none of the new \
             keys; load one signed by a new key first",
            b.policy.serial
        )),
        _ => Ok(()),
    }
}

/// A config that cannot be swapped in: logged, and the answer.
fn failed(e: String) -> Reply {
    log::event(Event::ReloadFailed).msg(&e).send();
    Reply::error(ErrorCode::ConfigError, e)
}
