//! `qkdpfd -nv`: the normalised configuration (stub).
