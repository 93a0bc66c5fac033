"""The local agent (`agentserver agent connect`): never imports the server side."""
