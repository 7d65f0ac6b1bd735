//! The slow-handler warning names the handler and the time. A separate test binary,
//! because it installs a process-wide logger that captures log lines.

use std::sync::Mutex;
use std::time::Duration;

use reactor::{Context, Handler, HandlerResult, Reactor, TimerId};

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;
impl log::Log for Capture {
    fn enabled(&self, _m: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        LINES
            .lock()
            .unwrap()
            .push(format!("{} {}", r.level(), r.args()));
    }
    fn flush(&self) {}
}

struct BlocksTheLoop;
impl Handler for BlocksTheLoop {
    type Message = ();
    type Job = ();

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        cx.timer_once(Duration::from_millis(1));
        Ok(())
    }
    fn on_timer(&mut self, cx: &mut Context<'_, Self>, _t: TimerId) -> HandlerResult {
        std::thread::sleep(Duration::from_millis(200));
        cx.stop();
        Ok(())
    }
}

#[test]
fn slow_handler_warning_names_the_handler() {
    log::set_logger(&Capture).unwrap();
    log::set_max_level(log::LevelFilter::Warn);
    let mut r = Reactor::new().unwrap();
    r.spawn(BlocksTheLoop);
    r.run().unwrap();
    let lines = LINES.lock().unwrap();
    let warn = lines
        .iter()
        .find(|l| l.contains("slow handler"))
        .unwrap_or_else(|| panic!("no slow-handler warning in {lines:?}"));
    assert!(warn.starts_with("WARN"), "{warn}");
    assert!(warn.contains("BlocksTheLoop"), "handler not named: {warn}");
    let ms: f64 = warn
        .split("for ")
        .nth(1)
        .and_then(|s| s.split(" ms").next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no duration in {warn}"));
    assert!(ms >= 200.0, "{warn}");
    assert_eq!(r.stats().slow_dispatches, 1);
}
