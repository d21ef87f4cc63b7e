"""Connection plugin for the lab and molecule hosts: podman exec with pipelining."""

DOCUMENTATION = """
    name: podman_pipelined
    short_description: Run tasks in a podman container with pipelining
    description:
      - The C(containers.podman.podman) connection with pipelining. A module
        is sent to C(podman exec -i) on stdin, so a task costs one podman
        process in place of a temporary folder, a copy, a chmod and a run.
      - Files are copied with C(podman cp) and the container's file system
        is never mounted on the controller.
      - ansible-core's su become plugin turns pipelining off (ansible-core
        2.19). This connection pipelines su tasks anyway when the commands
        run as root and no become password is set, because su started by
        root asks for no password.
    extends_documentation_fragment:
      - connection_pipelining
    options:
      remote_addr:
        description:
          - The name or ID of the container.
        default: inventory_hostname
        vars:
          - name: ansible_host
          - name: inventory_hostname
          - name: ansible_podman_host
      remote_user:
        description:
          - User name or UID that runs commands in the container (C(podman exec --user)).
        ini:
          - section: defaults
            key: remote_user
        env:
          - name: ANSIBLE_REMOTE_USER
        vars:
          - name: ansible_user
      podman_extra_args:
        description:
          - Options added to every podman command, before its subcommand (for example C(--log-level=debug)).
        default: ''
        ini:
          - section: defaults
            key: podman_extra_args
        vars:
          - name: ansible_podman_extra_args
        env:
          - name: ANSIBLE_PODMAN_EXTRA_ARGS
      podman_executable:
        description:
          - Name or path of the podman program on the controller.
        default: podman
        vars:
          - name: ansible_podman_executable
        env:
          - name: ANSIBLE_PODMAN_EXECUTABLE
"""

import shlex

from ansible import constants as C
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.connection import ConnectionBase, ensure_connect
from ansible_collections.containers.podman.plugins.connection.podman import Connection as PodmanConnection


class Connection(PodmanConnection):
    """podman connection that pipelines modules through podman exec -i."""

    transport = "podman_pipelined"
    has_pipelining = True

    def _connect(self):
        # The collection mounts the container's file system here for
        # put_file and fetch_file. Without the mount they use podman cp,
        # which saves a podman process on every task that copies no file.
        ConnectionBase._connect(self)  # pylint: disable=protected-access
        self._connected = True

    def is_pipelining_enabled(self, wrap_async=False):
        """Return whether to pipeline the module, also when su becomes a user from root."""
        # With no remote_user, podman exec runs as the image's user, root
        # in the lab image.
        su_from_root = (self.become is not None and self.become.name == "su"
                        and self.user in (None, "root", "0") and not self.become.get_option("become_pass"))
        if not su_from_root:
            return super().is_pipelining_enabled(wrap_async)
        # The conditions of ConnectionBase.is_pipelining_enabled other than
        # the become plugin's pipelining flag.
        return bool(self.get_option("pipelining")) and not C.DEFAULT_KEEP_REMOTE_FILES and not wrap_async

    @ensure_connect
    def exec_command(self, cmd, in_data=None, sudoable=True):
        """Run a command in the container, with in_data on its stdin."""
        ConnectionBase.exec_command(self, cmd, in_data=in_data, sudoable=sudoable)
        exec_args = ["exec"]
        # podman exec gives the command no stdin unless -i is given.
        if in_data is not None:
            exec_args.append("--interactive")
        if self.user:
            exec_args.extend(("--user", self.user))
        command = shlex.split(to_native(cmd, errors="surrogate_or_strict"))
        return self._podman(exec_args, command, in_data)
