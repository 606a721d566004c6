//! The master's side of a round: owns the epochs, fetches keys with
//! `enc_keys`, OFFERs and retransmits, checks the CONFIRM tag before it
//! installs. Pure; see the parent module for the contract.

use super::round::{Action, Ctx, Input, MIN_ROUND};
use crate::proto::peer::{self, Body, ConfirmKey, Message};
use crate::secret::{Psk, QkdKey};
use std::time::Instant;

pub(super) struct Master {
    /// The last epoch used (or persisted before our start).
    epoch: u64,
    phase: Phase,
    /// Consecutive failed rounds: the retry delay.
    failures: u32,
}

enum Phase {
    Idle {
        next: Instant,
    },
    Fetching {
        deadline: Instant,
    },
    Offering(Box<Offer>),
    /// CONFIRM checked; the parent is installing the PSK of `epoch`.
    Installing {
        epoch: u64,
        key_id: peer::KeyId,
        fetched: Instant,
        next: Instant,
    },
}

/// An OFFER in flight and what its CONFIRM must prove.
struct Offer {
    msg: Message,
    /// When `enc_keys` answered.
    fetched: Instant,
    psk: Psk,
    ck: ConfirmKey,
    sends: u32,
    next_send: Instant,
    give_up: Instant,
}

impl Master {
    pub(super) fn new(ctx: &mut Ctx, epoch: u64) -> Master {
        // Spread a hub's restart over a tenth of the period.
        let delay = if ctx.jitter {
            ctx.period
                .mul_f64(rand::Rng::gen_range(&mut ctx.rng, 0.0..=0.1))
        } else {
            std::time::Duration::ZERO
        };
        Master {
            epoch,
            phase: Phase::Idle {
                next: ctx.now + delay,
            },
            failures: 0,
        }
    }

    pub(super) fn epoch(&self) -> u64 {
        self.epoch
    }

    pub(super) fn in_round(&self) -> bool {
        !matches!(self.phase, Phase::Idle { .. })
    }

    pub(super) fn next_deadline(&self, ctx: &Ctx) -> Option<Instant> {
        match &self.phase {
            Phase::Idle { .. } if ctx.held => None,
            Phase::Idle { next } => Some(*next),
            Phase::Fetching { deadline } => Some(*deadline),
            Phase::Offering(o) => Some(o.next_send.min(o.give_up)),
            // The parent always answers; nothing to time out here.
            Phase::Installing { .. } => None,
        }
    }

    pub(super) fn handle(&mut self, ctx: &mut Ctx, input: Input, out: &mut Vec<Action>) {
        match input {
            Input::Hold(true) if matches!(self.phase, Phase::Fetching { .. }) => {
                // No OFFER leaves after the trip: the key being fetched
                // now may come from the incident (DESIGN §1: hold keeps
                // the last good PSK). An OFFER already out completes, as
                // the slave may have installed it.
                self.phase = Phase::Idle { next: ctx.now };
                out.push(Action::Ignored {
                    why: "rotation held (on_qber = hold): the key fetched is not offered",
                });
            }
            Input::Tick | Input::Hold(_) => self.on_tick(ctx, out),
            Input::RotateNow => self.on_rotate_now(ctx, out),
            Input::KeyReady { key_id, key } => self.on_key(ctx, key_id, key, out),
            Input::KeyFailed { why, .. } => match self.phase {
                Phase::Fetching { .. } => self.fail(ctx, format!("kme: {why}"), out),
                _ => out.push(Action::Ignored {
                    why: "kme answer without a fetch",
                }),
            },
            Input::Received(m) => self.on_message(ctx, m, out),
            Input::PersistFailed { epoch, why } => match &self.phase {
                Phase::Offering(o) if o.msg.epoch == epoch => {
                    self.fail(ctx, format!("epoch {epoch} not persisted: {why}"), out)
                }
                _ => out.push(Action::Ignored {
                    why: "persist failure for another epoch",
                }),
            },
            Input::Installed { epoch } => self.on_installed(ctx, epoch, out),
            Input::InstallFailed { epoch, why } => match &self.phase {
                Phase::Installing { epoch: e, .. } if *e == epoch => {
                    self.fail(ctx, format!("install of epoch {epoch}: {why}"), out)
                }
                _ => out.push(Action::Ignored {
                    why: "install answer for another epoch",
                }),
            },
        }
    }

    fn on_tick(&mut self, ctx: &mut Ctx, out: &mut Vec<Action>) {
        let now = ctx.now;
        match &mut self.phase {
            Phase::Idle { next } if now >= *next && !ctx.held => self.start(ctx, out),
            Phase::Fetching { deadline } if now >= *deadline => {
                self.fail(ctx, "kme: no answer".into(), out)
            }
            Phase::Offering(o) if now >= o.give_up => {
                let why = format!(
                    "no confirm for epoch {} after {} offers",
                    o.msg.epoch, o.sends
                );
                self.fail(ctx, why, out)
            }
            Phase::Offering(o) if now >= o.next_send => {
                // The same OFFER (epoch, nonce, key_ID): the slave may
                // have installed already and answers from its cache.
                o.next_send = now + Ctx::backoff(o.sends);
                o.sends += 1;
                out.push(Action::Send(o.msg.clone()));
            }
            _ => {}
        }
    }

    fn on_rotate_now(&mut self, ctx: &mut Ctx, out: &mut Vec<Action>) {
        match self.phase {
            Phase::Idle { .. } if ctx.held => out.push(Action::Ignored {
                why: "rotation held (on_qber = hold, or the link's QBER not known yet)",
            }),
            Phase::Idle { .. } => self.start(ctx, out),
            _ => out.push(Action::Ignored {
                why: "a round is in progress",
            }),
        }
    }

    fn start(&mut self, ctx: &mut Ctx, out: &mut Vec<Action>) {
        // No epoch left (a NACK of u64::MAX): every round would spend a
        // key at both KMEs for nothing. Found before the fetch, not after.
        if self.epoch == u64::MAX {
            return self.fail(ctx, "epoch space exhausted".into(), out);
        }
        // The KME client has its own timeouts; this is the backstop.
        self.phase = Phase::Fetching {
            deadline: ctx.now + round_length(ctx),
        };
        out.push(Action::FetchEncKey);
    }

    fn on_key(&mut self, ctx: &mut Ctx, key_id: peer::KeyId, key: QkdKey, out: &mut Vec<Action>) {
        if !matches!(self.phase, Phase::Fetching { .. }) {
            out.push(Action::Ignored {
                why: "kme key without a fetch",
            });
            return;
        }
        let epoch = match self.epoch.checked_add(1) {
            Some(e) => e,
            None => return self.fail(ctx, "epoch space exhausted".into(), out),
        };
        let (psk, ck) = match peer::derive(&key, &ctx.params.link_id, epoch, &key_id) {
            Ok(d) => d,
            Err(e) => return self.fail(ctx, e, out),
        };
        // Never reuse an epoch in this process, even if persisting fails.
        self.epoch = epoch;
        let nonce = ctx.nonce();
        let msg = ctx.message(epoch, nonce, key_id, Body::Offer);
        let now = ctx.now;
        out.push(Action::PersistEpoch(epoch));
        out.push(Action::Send(msg.clone()));
        self.phase = Phase::Offering(Box::new(Offer {
            msg,
            fetched: now,
            psk,
            ck,
            sends: 1,
            next_send: now + Ctx::backoff(0),
            give_up: now + round_length(ctx),
        }));
    }

    fn on_message(&mut self, ctx: &mut Ctx, m: Message, out: &mut Vec<Action>) {
        let Phase::Offering(o) = &self.phase else {
            return out.push(match m.body {
                Body::Offer => Action::AuthFailed { why: "wrong-role" },
                _ => Action::Ignored {
                    why: "no offer in flight",
                },
            });
        };
        let ours = m.epoch == o.msg.epoch && m.nonce == o.msg.nonce && m.key_id == o.msg.key_id;
        match m.body {
            Body::Offer => out.push(Action::AuthFailed { why: "wrong-role" }),
            Body::Confirm { .. } | Body::Nack { .. } if !ours => out.push(Action::Ignored {
                why: "answer to another offer",
            }),
            Body::Confirm { tag } => {
                let l = &ctx.params.link_id;
                if peer::check_tag(&o.ck, l, m.epoch, &m.nonce, &m.key_id, &tag) {
                    self.done(ctx, out);
                } else {
                    out.push(Action::AuthFailed { why: "bad-tag" });
                    let why = format!("bad confirmation tag for epoch {}", m.epoch);
                    self.fail(ctx, why, out);
                }
            }
            // Our own epoch back: the slave accepted the OFFER and lost its
            // round (it restarted before it confirmed). A failed round,
            // retried after the backoff with a new key, not at once.
            Body::Nack { last } if last == o.msg.epoch => {
                out.push(Action::PeerRound);
                let why = format!("the peer's round for epoch {last} failed");
                self.fail(ctx, why, out);
            }
            Body::Nack { last } => {
                out.push(Action::PeerRound);
                self.epoch = self.epoch.max(last);
                match ctx.held {
                    // The next round waits for the hold to end.
                    true => self.phase = Phase::Idle { next: ctx.now },
                    false => self.start(ctx, out),
                }
            }
        }
    }

    /// The CONFIRM checked out: install (the round is done once the
    /// parent says the PSK is in the kernel).
    fn done(&mut self, ctx: &mut Ctx, out: &mut Vec<Action>) {
        let next = ctx.now + ctx.jittered(ctx.period);
        let Phase::Offering(o) = std::mem::replace(&mut self.phase, Phase::Idle { next }) else {
            return;
        };
        self.phase = Phase::Installing {
            epoch: o.msg.epoch,
            key_id: o.msg.key_id,
            fetched: o.fetched,
            next,
        };
        out.push(Action::PeerRound);
        out.push(Action::InstallPsk {
            epoch: o.msg.epoch,
            psk: o.psk,
        });
    }

    fn on_installed(&mut self, _ctx: &mut Ctx, epoch: u64, out: &mut Vec<Action>) {
        match &self.phase {
            Phase::Installing {
                epoch: e,
                key_id,
                fetched,
                next,
            } if *e == epoch => {
                out.push(Action::RoundDone {
                    epoch,
                    key_id: key_id.clone(),
                    fetched: *fetched,
                });
                self.failures = 0;
                self.phase = Phase::Idle { next: *next };
            }
            _ => out.push(Action::Ignored {
                why: "install answer for another epoch",
            }),
        }
    }

    fn fail(&mut self, ctx: &mut Ctx, why: String, out: &mut Vec<Action>) {
        let delay = Ctx::backoff(self.failures);
        self.failures = self.failures.saturating_add(1);
        self.phase = Phase::Idle {
            next: ctx.now + delay,
        };
        out.push(Action::RoundFailed { why });
    }
}

/// How long a round may take before it is abandoned.
fn round_length(ctx: &Ctx) -> std::time::Duration {
    ctx.period.max(MIN_ROUND)
}
