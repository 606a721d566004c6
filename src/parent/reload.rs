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
    let listen = |c: &Config| c.peering.as_ref().map(|p| p.listen);
    if new.daemon != p.conf.daemon
        || new.firewall != p.conf.firewall
        || new.wireguard != p.conf.wireguard
        || new.link != p.conf.link
        || listen(&new) != listen(&p.conf)
    {
        let msg = "[daemon], [firewall], [wireguard], [link] and [peering] listen changes \
                   need a restart; not reloading";
        log::event(Event::ReloadFailed).msg(msg).send();
        return Err(Reply::error(ErrorCode::Refused, msg));
    }
    if let Err(e) = super::check_supported(&new) {
        return Err(failed(e));
    }
    // What start-up derives from its config: the policy keys, then what
    // the engine gets.
    let derived = super::read_keys(&new).and_then(|keys| {
        let inputs = engine_conf::engine_inputs(&new, &keys, &mut **p.wg.backend())?;
        Ok((keys, inputs))
    });
    let (keys, inputs) = derived.map_err(failed)?;
    let old = (
        std::mem::replace(&mut p.keys, keys),
        std::mem::replace(
            &mut p.store,
            crate::policy::Store::new(new.policy.dir.clone()),
        ),
        std::mem::replace(&mut p.conf, new),
    );
    let mut out = Changed::none();
    match ToEngine::Config(Box::new(engine_conf::engine_config(p, inputs))).try_encode() {
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

/// A config that cannot be swapped in: logged, and the answer.
fn failed(e: String) -> Reply {
    log::event(Event::ReloadFailed).msg(&e).send();
    Reply::error(ErrorCode::ConfigError, e)
}
