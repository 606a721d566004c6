//! The slave's side of a round: accepts an OFFER only for an epoch above
//! the last one it accepted (else a signed NACK), fetches the key with
//! `dec_keys` exactly once, installs, CONFIRMs, and answers retransmits of
//! that OFFER from its cache. Pure; see the parent module for the contract.

use super::round::{Action, Ctx, Input};
use crate::proto::peer::{self, Body, KeyId, Message, Nonce};
use crate::secret::QkdKey;

pub(super) struct Slave {
    /// The last epoch accepted (persisted before `dec_keys`).
    last: u64,
    /// The round of epoch `last`, while this process has seen it.
    round: Option<Round>,
}

struct Round {
    epoch: u64,
    nonce: Nonce,
    key_id: KeyId,
    /// When the OFFER was accepted: all this end knows of the key's age.
    accepted: std::time::Instant,
    state: State,
}

impl Round {
    /// `m` is about this round: its epoch, nonce and key.
    fn answers(&self, m: &Message) -> bool {
        self.epoch == m.epoch && self.nonce == m.nonce && self.key_id == m.key_id
    }

    fn confirm(&self, ctx: &Ctx, tag: [u8; 32]) -> Message {
        ctx.message(
            self.epoch,
            self.nonce,
            self.key_id.clone(),
            Body::Confirm { tag },
        )
    }
}

enum State {
    Fetching,
    /// The PSK is with the parent; the CONFIRM, with this tag, leaves once
    /// it is installed.
    Installing([u8; 32]),
    /// The CONFIRM's tag, for retransmitted OFFERs. Only the tag is kept
    /// (the rest is the round's and the link's): every idle link of a hub
    /// keeps its last CONFIRM, and a whole message made each link's
    /// rotation twice its size.
    Confirmed([u8; 32]),
    /// `dec_keys` (or persisting) failed: never asked again for this key.
    Failed,
}

impl Slave {
    pub(super) fn new(last: u64) -> Slave {
        Slave { last, round: None }
    }

    pub(super) fn epoch(&self) -> u64 {
        self.last
    }

    pub(super) fn in_round(&self) -> bool {
        matches!(
            self.round,
            Some(Round {
                state: State::Fetching | State::Installing(_),
                ..
            })
        )
    }

    /// `m` is the OFFER of the round in progress (fetching or
    /// installing), which [`Slave::on_offer`] ignores.
    pub(super) fn busy_with(&self, m: &Message) -> bool {
        self.round.as_ref().is_some_and(|r| {
            let busy = matches!(r.state, State::Fetching | State::Installing(_));
            busy && m.body == Body::Offer && r.answers(m)
        })
    }

    pub(super) fn handle(&mut self, ctx: &mut Ctx, input: Input, out: &mut Vec<Action>) {
        match input {
            Input::Tick | Input::Hold(_) => {}
            Input::RotateNow => out.push(Action::Ignored {
                why: "the master starts rounds",
            }),
            Input::Received(m) => match m.body {
                Body::Offer => self.on_offer(ctx, m, out),
                _ => out.push(Action::AuthFailed { why: "wrong-role" }),
            },
            Input::KeyReady { key_id, key } => self.on_key(ctx, key_id, key, out),
            Input::KeyFailed { key_id, why } => {
                if self.fail_fetch(key_id.as_ref()) {
                    out.push(Action::RoundFailed {
                        why: format!("kme: {why}"),
                    });
                } else {
                    out.push(Action::Ignored {
                        why: "kme failure for another key",
                    });
                }
            }
            Input::Installed { epoch } => self.on_installed(ctx, epoch, out),
            Input::InstallFailed { epoch, why } => match self.round.as_mut() {
                Some(r) if r.epoch == epoch && matches!(r.state, State::Installing(_)) => {
                    // Never CONFIRM a PSK the kernel does not hold.
                    r.state = State::Failed;
                    out.push(Action::RoundFailed {
                        why: format!("install of epoch {epoch}: {why}"),
                    });
                }
                _ => out.push(Action::Ignored {
                    why: "install answer for another epoch",
                }),
            },
            Input::PersistFailed { epoch, why } => {
                let current = self.round.as_ref().map(|r| r.key_id.clone());
                if self.last == epoch && self.fail_fetch(current.as_ref()) {
                    out.push(Action::RoundFailed {
                        why: format!("epoch {epoch} not persisted: {why}"),
                    });
                }
            }
        }
    }

    fn on_offer(&mut self, ctx: &mut Ctx, m: Message, out: &mut Vec<Action>) {
        if let Some(r) = &self.round {
            if r.answers(&m) {
                // A retransmit: never a second dec_keys.
                return out.push(match &r.state {
                    State::Confirmed(tag) => Action::Send(r.confirm(ctx, *tag)),
                    State::Fetching | State::Installing(_) => Action::Ignored {
                        why: "retransmit while fetching",
                    },
                    // NACK(last), as DESIGN §6 answers an epoch not above
                    // the last: the master counts its round failed and
                    // retries after its 1 s to 30 s backoff. Unanswered,
                    // it waited out the whole round (`rotate`, 300 s by
                    // default) and two failed `dec_keys` in a row could
                    // outlast `max_key_age`.
                    State::Failed => {
                        let nack = Body::Nack { last: self.last };
                        Action::Send(ctx.message(m.epoch, m.nonce, m.key_id, nack))
                    }
                });
            }
        }
        if m.epoch <= self.last {
            // Replayed, or a master that lost its epoch: tell it where we are.
            out.push(Action::AuthFailed { why: "stale-epoch" });
            let nack = Body::Nack { last: self.last };
            out.push(Action::Send(ctx.message(m.epoch, m.nonce, m.key_id, nack)));
            return;
        }
        if ctx.held {
            return out.push(Action::Ignored {
                why: "rotation held (on_qber = hold)",
            });
        }
        self.last = m.epoch;
        self.round = Some(Round {
            epoch: m.epoch,
            nonce: m.nonce,
            key_id: m.key_id.clone(),
            accepted: ctx.now,
            state: State::Fetching,
        });
        out.push(Action::PeerRound);
        out.push(Action::PersistEpoch(m.epoch));
        out.push(Action::FetchDecKey { key_id: m.key_id });
    }

    fn on_key(&mut self, ctx: &mut Ctx, key_id: KeyId, key: QkdKey, out: &mut Vec<Action>) {
        let Some(r) = self
            .round
            .as_mut()
            .filter(|r| matches!(r.state, State::Fetching) && r.key_id == key_id)
        else {
            return out.push(Action::Ignored {
                why: "kme key for no pending offer",
            });
        };
        let l = &ctx.params.link_id;
        let (psk, ck) = match peer::derive(&key, l, r.epoch, &r.key_id) {
            Ok(d) => d,
            Err(e) => {
                r.state = State::Failed;
                return out.push(Action::RoundFailed { why: e });
            }
        };
        let tag = peer::confirm_tag(&ck, l, r.epoch, &r.nonce, &r.key_id);
        r.state = State::Installing(tag);
        out.push(Action::InstallPsk {
            epoch: r.epoch,
            psk,
        });
    }

    fn on_installed(&mut self, ctx: &Ctx, epoch: u64, out: &mut Vec<Action>) {
        let Some(r) = self.round.as_mut().filter(|r| r.epoch == epoch) else {
            return out.push(Action::Ignored {
                why: "install answer for another epoch",
            });
        };
        let State::Installing(tag) = r.state else {
            return out.push(Action::Ignored {
                why: "install answer for another epoch",
            });
        };
        out.push(Action::Send(r.confirm(ctx, tag)));
        r.state = State::Confirmed(tag);
        out.push(Action::RoundDone {
            epoch,
            key_id: r.key_id.clone(),
            fetched: r.accepted,
        });
    }

    /// Marks the pending fetch of `key_id` failed; false if there is none.
    fn fail_fetch(&mut self, key_id: Option<&KeyId>) -> bool {
        match self.round.as_mut() {
            Some(r) if matches!(r.state, State::Fetching) && key_id == Some(&r.key_id) => {
                r.state = State::Failed;
                true
            }
            _ => false,
        }
    }
}
