//! The README's custom server: answers every line in upper case.
//! `upper` prints `listening on IP:PORT`; SIGINT/SIGTERM stop it.

use reactor::framing::Delimited;
use reactor::{
    Conn, ConnConfig, Context, Handler, HandlerResult, ListenOptions, Listener, Reactor,
};

struct Upper {
    conn: Conn,
    lines: Delimited,
}

impl Handler for Upper {
    fn on_start(&mut self, cx: &mut Context<'_>) -> HandlerResult {
        Ok(self.conn.register(cx)?)
    }

    fn on_readable(&mut self, cx: &mut Context<'_>, _source: u8) -> HandlerResult {
        let status = self.conn.fill(cx)?;
        while let Some(frame) = self.conn.next_frame(&self.lines)? {
            let reply = frame.payload(self.conn.read_buf()).to_ascii_uppercase();
            self.conn.consume(frame.consumed);
            self.conn.queue(cx, &reply);
            self.conn.queue(cx, b"\n");
        }
        self.conn.flush(cx)?;
        if status.eof {
            self.conn.shutdown_write(cx)?;
        }
        if self.conn.is_done() {
            cx.close();
        }
        Ok(())
    }

    fn on_writable(&mut self, cx: &mut Context<'_>, _source: u8) -> HandlerResult {
        self.conn.flush(cx)?;
        if self.conn.is_done() {
            cx.close();
        }
        Ok(())
    }
}

fn main() -> std::io::Result<()> {
    env_logger::init();
    let mut reactor = Reactor::new()?;
    reactor.shutdown_on_signals()?; // SIGINT/SIGTERM: stop accepting, drain, exit
    let listener = Listener::bind(
        "127.0.0.1:0".parse().unwrap(),
        ListenOptions::default(),
        |stream, _peer| {
            Some(Upper {
                conn: Conn::new(stream, 0, ConnConfig::default()),
                lines: Delimited::new(b"\n", 64 * 1024),
            })
        },
    )?;
    println!("listening on {}", listener.local_addr());
    reactor.spawn(listener);
    reactor.run()
}
