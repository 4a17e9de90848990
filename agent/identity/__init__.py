"""The box's identity upkeep: clock sanity, EST enrollment client, certificate renewal."""
