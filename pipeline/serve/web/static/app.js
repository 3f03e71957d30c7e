// The web UI's only script; every page works without it. It asks before destructive
// submits (data-confirm) and keeps a slow submit from being sent twice (data-busy).
"use strict";
document.addEventListener("submit", (event) => {
  const form = event.target;
  const submitter = event.submitter;
  const question = (submitter && submitter.dataset.confirm) || form.dataset.confirm;
  if (question && !window.confirm(question)) {
    event.preventDefault();
    return;
  }
  if (form.dataset.busy && submitter) {
    // Disabled after this event, so the browser still sends the submitter's name.
    setTimeout(() => {
      submitter.disabled = true;
      submitter.textContent = form.dataset.busy;
    });
  }
});
