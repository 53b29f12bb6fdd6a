//! `/init`: see the library for what PID1 does.

fn main() {
    cvm_init::run()
}
