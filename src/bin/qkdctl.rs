//! qkdctl: the control tool for qkdpfd. Thin: the work is in `qkdpfd::ctl`.

use qkdpfd::ctl::{VerifyArgs, main_with};

/// `policy verify` is wired to the policy module by the lead; until then it
/// refuses, so no script mistakes a missing check for a pass.
fn verify_not_built(_: &VerifyArgs) -> i32 {
    eprintln!("policy verify: not built");
    1
}

fn main() {
    main_with(verify_not_built)
}
