# The podman connection of containers.podman with pipelining.
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
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
      - Tasks that become another user through C(su) are not pipelined,
        because ansible-core's su become plugin does not support it. They
        run as with the collection's connection.
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
          - Extra arguments to pass to the podman command line.
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
          - Executable for podman command.
        default: podman
        vars:
          - name: ansible_podman_executable
        env:
          - name: ANSIBLE_PODMAN_EXECUTABLE
"""

import shlex

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
