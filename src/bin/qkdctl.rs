//! qkdctl: the control tool for qkdpfd. Thin: the work is in `qkdpfd::ctl`.

fn main() {
    qkdpfd::ctl::main_with(qkdpfd::ctl::verify::run)
}
