"""The interfaces a plugin implements: cells, init strategies, context networks, tasks, their options, the result contracts and the component kinds."""
