"""Development tooling: a Novi AMS sandbox server, a local GNU Mailman 3 core, and the demo."""
