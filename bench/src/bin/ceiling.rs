//! The no-Ruby ceiling: anycable-core's server with `BenchmarkChannel` written in Rust
//! (subscribe → stream "all"; echo → transmit; broadcast → hub broadcast + transmit).
//! What the embedded server would do if Ruby cost nothing.
//!
//!     anycable-ceiling 127.0.0.1:4000

#[path = "../server_args.rs"]
mod server_args;

use std::sync::Arc;

use anycable_core::protocol::{self, Command};
use anycable_core::session::SessionRef;
use anycable_core::{
    CommandRequest, ConnectReply, ConnectRequest, Controller, Hub, Server, ServerConfig,
};

struct Benchmark {
    hub: Arc<Hub>,
}

impl Controller for Benchmark {
    async fn connect(&self, _req: ConnectRequest) -> ConnectReply {
        ConnectReply::Accepted
    }

    async fn command(&self, req: CommandRequest) {
        let CommandRequest { session, command } = req;
        let id = &command.identifier;
        match command.command {
            Command::Subscribe => {
                self.hub.subscribe(&session, "all", id);
                session.transmit(protocol::subscription_reply(id, true));
            }
            Command::Unsubscribe => self.hub.unsubscribe_identifier(&session, id),
            // The server answers whispers itself; a controller never sees one. Presence
            // joins the channel decides on: the benchmark channel has no presence.
            Command::Whisper | Command::Join => {}
            Command::Message => {
                let data = command.data.unwrap_or_default();
                let Ok(mut value) = serde_json::from_str::<serde_json::Value>(&data) else {
                    return;
                };
                let action = value["action"].as_str().unwrap_or("").to_string();
                if let Some(obj) = value.as_object_mut() {
                    obj.remove("action");
                }
                let payload = value.to_string();
                if action == "broadcast" {
                    self.hub.broadcast("all", &payload, None);
                }
                session.send_frame(protocol::broadcast_frame(id, &payload));
            }
        }
    }

    async fn disconnect(&self, _session: SessionRef) {}
}

fn main() {
    let (addr, rt) = server_args::addr_and_runtime();
    rt.block_on(async {
        let hub = Arc::new(Hub::new(None));
        let server = Server::new(ServerConfig::default(), Benchmark { hub: hub.clone() }, hub);
        server.start().expect("no pub/sub to start");
        let bound = server.listen(addr.parse().expect("address")).await.unwrap();
        println!("ceiling server on {bound}");
        std::future::pending::<()>().await;
    });
}
