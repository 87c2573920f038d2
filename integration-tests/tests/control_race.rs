//! Two OpenSSH clients of one account race for one name through two edges in two regions:
//! exactly one gets the tunnel, the other gets a clear refusal, and the database holds one
//! live tunnel. Real Postgres primary and replicas, real control, real edges, real `ssh`.

use nearhop_stack::edge::{SshArgs, SshClient};
use nearhop_stack::{Stack, StackOptions};
use nearhop_wire::Plan;
use std::time::Duration;

fn live_tunnels(stack: &Stack, label: &str) -> String {
    let out = std::process::Command::new("psql")
        .arg(stack.pg.primary.endpoint.conninfo())
        .args(["-XAtqc"])
        .arg(format!(
            "SELECT count(*) FROM tunnels WHERE label = '{label}' AND closed_at IS NULL"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn two_edges_racing_for_one_name_exactly_one_wins() {
    let stack = Stack::start(StackOptions {
        with_edges: true,
        ..Default::default()
    })
    .expect("stack starts");
    let acct = stack.control.create_account(Plan::Pro).unwrap();
    let dir = stack.path().join("ssh");
    for round in 0..4 {
        let label = format!("race{round}");
        let args = SshArgs {
            user: Some(acct.token.clone()),
            forwards: vec![format!("{label}:0:localhost:9")],
            no_command: false,
            command: Vec::new(),
            options: Vec::new(),
        };
        let mut a = SshClient::start(
            &dir,
            &format!("a{round}"),
            stack.region("us").unwrap().ssh_addr(),
            &args,
        )
        .unwrap();
        let mut b = SshClient::start(
            &dir,
            &format!("b{round}"),
            stack.region("ap").unwrap().ssh_addr(),
            &args,
        )
        .unwrap();
        let ra = a.wait_for_url(Duration::from_secs(20));
        let rb = b.wait_for_url(Duration::from_secs(20));
        let winners = [ra.is_ok(), rb.is_ok()].iter().filter(|w| **w).count();
        assert_eq!(
            winners,
            1,
            "round {round}: exactly one client must get the name\nA: {}\nB: {}",
            a.output(),
            b.output()
        );
        let loser = if ra.is_ok() { &b } else { &a };
        let said = loser.output();
        assert!(
            said.contains("in use")
                || said.contains("taken by another tunnel")
                || said.contains("being set up by another connection"),
            "round {round}: the loser must be told the name is in use; it got:\n{said}"
        );
        assert_eq!(live_tunnels(&stack, &label), "1", "round {round}");
        a.stop();
        b.stop();
    }
}
