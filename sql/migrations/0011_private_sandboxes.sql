-- Private sandboxes: only their creator and the workspace's owners and maintainers may open or
-- see them in full (others see that they exist). And whether a workspace lets every member who
-- may manage sandboxes pause, resume and delete anyone's, not only their own.
ALTER TABLE sandboxes ADD COLUMN private BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE workspaces ADD COLUMN members_manage_all BOOLEAN NOT NULL DEFAULT false;
